"""The benchmark's baseline: a bare Flask app that parses a JSON body and sends it back.

    gunicorn --config python:responder.gunicorn_conf 'bench.echo_app:create_app()'
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request


def create_app() -> Flask:
    """POST / echoes the JSON body (200); GET /healthz says the process is up."""
    app = Flask(__name__)

    @app.post("/")
    def echo() -> tuple[Response, int]:
        return jsonify(request.get_json(force=True)), 200

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        return jsonify({"status": "ok"}), 200

    return app
