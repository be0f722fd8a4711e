# falco-responder image: a virtualenv built in one stage, copied alone into a slim runtime.
# tests/test_image.py parses this file and runs the ENTRYPOINT below against a wheel of the
# project, so keep the entrypoint in exec form and the final stage copying only /opt/venv.

FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# README* is optional: the glob keeps the build working whether or not it exists yet.
COPY pyproject.toml README* ./
COPY responder ./responder
# Bytecode is compiled here, at build time: the runtime root filesystem is read-only.
RUN /opt/venv/bin/pip install .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
COPY --from=builder /opt/venv /opt/venv
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001
EXPOSE 2801
# `responder serve` runs two processes under one parent: gunicorn (1 worker: an event loop
# reading requests whole, then 2 threads running the app, on 0.0.0.0:2801 unless RESPONDER_HOST/PORT say otherwise; heartbeat in /dev/shm
# and no control socket, so a read-only root filesystem is enough) taking events in, and the
# queue worker acting on them, on its own core rather than sharing the server's GIL. The
# parent stops both on SIGTERM and restarts a worker that dies. TLS and mutual TLS come
# from RESPONDER_TLS_*. The same gunicorn options serve `gunicorn --config
# python:responder.gunicorn_conf 'responder.app:create_app()'`, which runs the queue in a
# thread of the serving process instead.
ENTRYPOINT ["responder", "serve"]
