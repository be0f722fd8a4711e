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
# --config python:responder.gunicorn_conf: the settings `responder serve` derives from the
# RESPONDER_* variables (TLS and mutual TLS from RESPONDER_TLS_*, among others); the flags
# after it take precedence and pin what the image promises.
# gthread workers: Falcosidekick posts one event at a time per output, Slack and the
# Kubernetes API are I/O; threads are enough. One worker keeps in-process state single.
# --worker-tmp-dir /dev/shm: the worker heartbeat file must not need a writable root FS.
# --no-control-socket: gunicorn would otherwise create $HOME/.gunicorn/gunicorn.ctl, which
# fails on a read-only root filesystem and is not needed in a container.
ENTRYPOINT ["gunicorn", "--config", "python:responder.gunicorn_conf", \
            "--worker-class", "gthread", "--workers", "1", "--threads", "4", \
            "--bind", "0.0.0.0:2801", "--worker-tmp-dir", "/dev/shm", "--no-control-socket", \
            "responder.app:create_app()"]
