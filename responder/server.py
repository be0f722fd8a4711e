"""`responder serve`: gunicorn's event loop reading requests, our app in a few threads
(responder.bridge), configured from our settings."""

from __future__ import annotations

import gc
import os
import ssl
import threading
from collections.abc import Mapping
from typing import Any

from gunicorn.app.base import BaseApplication

from .actions import default_registry
from .lastgood import load_startup_table
from .metrics import MULTIPROC_ENV
from .settings import Settings

# Falcosidekick's client (Go's default transport) keeps an idle connection 90 s and never
# resends a POST that failed: were the server to close first (gunicorn's default: 2 s), an
# event sent as it closed would be lost. Idle connections wait in the event loop, not in
# a thread.
KEEPALIVE_SECONDS = 120


class ResponderServer(BaseApplication):
    """Embeds gunicorn so `responder serve` and the container image run the same server."""

    def __init__(self, settings: Settings, options: Mapping[str, Any]):
        self.settings = settings
        self.options = dict(options)
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from .app import create_app

        return create_app(self.settings)


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """Options shared by `responder serve` and the image (via responder.gunicorn_conf)."""
    return {**_tls_options(settings),
        "bind": f"{settings.intake.host}:{settings.intake.port}",
        "workers": settings.intake.workers,
        # gthread gave each connection a thread before its request arrived: two slow
        # clients stopped all intake. This asyncio worker reads each request whole first.
        "worker_class": "responder.bridge.BufferedWorker",
        "threads": settings.intake.threads,
        # Enforced by responder.bridge.ServingLoop (gunicorn's asyncio worker does not).
        "worker_connections": settings.intake.max_connections,
        # The standard loop: nothing to install, and uvloop was not measurably faster here.
        "asgi_loop": "asyncio",
        # What a connection stalled in its headers can hold: 32 fields of up to 8 KiB (256 KiB;
        # gunicorn's default of 100 fields allowed 800 KiB). Falcosidekick sends a handful.
        "limit_request_fields": 32,
        # Falcosidekick never times out a request; we should not hang on one either.
        "timeout": 60,
        "keepalive": KEEPALIVE_SECONDS,
        "accesslog": None,
        # The control socket would be written under $HOME: not there on a read-only root.
        "control_socket_disable": True,
        "worker_exit": _worker_exit,
        "post_worker_init": _post_worker_init,
        "child_exit": _child_exit,
        # /dev/shm keeps the worker heartbeat off a read-only root filesystem.
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
    }


def _post_worker_init(worker: Any) -> None:
    """The app is built: move its long-lived objects (the Kubernetes client's models, the
    table) out of the collector's way, so full collections stop pausing requests."""
    gc.freeze()


def _child_exit(server: Any, worker: Any) -> None:
    """In the master: a dead worker's live gauges must stop counting in the sum."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def _worker_exit(server: Any, worker: Any) -> None:
    """On shutdown: finish the action in hand, send what Slack is owed, close the journal."""
    from .app import shutdown

    app = getattr(worker, "wsgi", None)
    if app is not None and "worker" in getattr(app, "extensions", {}):
        shutdown(app)


def _tls_options(settings: Settings) -> dict[str, Any]:
    if not settings.auth.tls_cert_file:
        return {}
    options: dict[str, Any] = {"certfile": settings.auth.tls_cert_file,
                               "keyfile": settings.auth.tls_key_file}
    if settings.auth.tls_client_ca_file:
        # Mutual TLS: a client without a cert signed by this CA fails the handshake and
        # never reaches the app.
        options.update(ca_certs=settings.auth.tls_client_ca_file, cert_reqs=ssl.CERT_REQUIRED)
    return options


def run_server(env: Mapping[str, str]) -> int:
    """Serve in this process (gunicorn's master) with the settings in `env`."""
    settings = Settings.from_env(env)
    # Fail here, with every table error listed, rather than in each gunicorn worker; a
    # refused table with a last good copy kept serves that copy (responder.lastgood).
    load_startup_table(settings.table.actions_file, default_registry(), settings.storage.state_dir)
    ResponderServer(settings, gunicorn_options(settings)).run()
    return 0


DRAIN_SECONDS = 20.0


def run_worker(metrics_port: int, stop: threading.Event) -> int:
    """`responder work`: the queue worker in a process of its own, beside intake-only
    servers (RESPONDER_WORKER=off) sharing RESPONDER_STATE_DIR, until `stop` is set.
    Built by the same wiring as the web process, without a web app."""
    import dataclasses

    from prometheus_client import start_http_server

    from .wakeup import WakeListener
    from .wiring import build_components, start_reloader, stop_components, watch_queue

    settings = Settings.from_env()
    settings = dataclasses.replace(settings, intake=dataclasses.replace(
        settings.intake, worker="thread", mode="queue"))
    parts = build_components(settings)
    reloader = start_reloader(parts)
    watch_queue(parts, spool=None)  # this process spools nothing
    parts.worker.start()
    wakeup = WakeListener(parts.spool_dir, parts.worker.wake).start()
    if metrics_port:
        # Action outcomes, Slack sends and limit trips are counted here, not by the servers.
        start_http_server(metrics_port, addr=settings.intake.host, registry=parts.metrics.registry)
    gc.freeze()
    stop.wait()
    # The servers stopped first (responder serve does that): what they took in is acted on.
    wakeup.close()
    stop_components(parts, reloader, timeout=DRAIN_SECONDS)
    return 0
