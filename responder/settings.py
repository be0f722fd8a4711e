"""Settings: parsed once from RESPONDER_* environment variables, typed, failing fast."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
KUBE_MODES = ("auto", "in-cluster", "kubeconfig", "none")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
INTAKES = ("queue", "inline")
WORKER_MODES = ("process", "thread", "off")
DROP_POLICIES = ("drop-new", "drop-oldest")


def _env(name: str, doc: str, default: Any, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": name, "doc": doc, "secret": secret},
                 repr=not secret)


@dataclass(frozen=True)
class Settings:
    """Everything the service can be told; each field names its environment variable."""

    host: str = _env("RESPONDER_HOST", "address to listen on", "0.0.0.0")
    port: int = _env("RESPONDER_PORT", "TCP port to listen on", 2801)
    actions_file: str | None = _env(
        "RESPONDER_ACTIONS_FILE", "action table YAML; unset = the packaged default", None)
    force_dry_run: bool = _env(
        "RESPONDER_DRY_RUN", "true forces dry-run for every rule, whatever the table says",
        False)
    max_body_bytes: int = _env("RESPONDER_MAX_BODY_BYTES", "largest accepted request body",
                               1024 * 1024)
    log_format: str = _env("RESPONDER_LOG_FORMAT", "text or json", "text")
    log_level: str = _env("RESPONDER_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR", "INFO")
    kube_mode: str = _env("RESPONDER_KUBE_CONFIG",
                          "auto (in-cluster, else kubeconfig, else none), in-cluster, "
                          "kubeconfig or none", "auto")
    kube_timeout: float = _env("RESPONDER_KUBE_TIMEOUT", "seconds per Kubernetes API call", 10.0)
    namespace: str | None = _env(
        "RESPONDER_NAMESPACE", "the responder's own namespace, always protected; "
        "default: the service account's namespace", None)
    workers: int = _env("RESPONDER_WORKERS", "gunicorn worker processes", 1)
    # Two: the intake is CPU-bound under the GIL, and more threads only contend for it
    # (measured in bench/: 4 threads took 15-25% off the rate at concurrency 8); the second
    # keeps a probe or a scrape answered while an event is in hand.
    threads: int = _env("RESPONDER_THREADS",
                        "threads per gunicorn worker running the app on requests read whole", 2)
    auth_token: str | None = _env(
        "RESPONDER_AUTH_TOKEN", "bearer token Falcosidekick must send (webhook.customheaders)",
        None, secret=True)
    auth_token_file: str | None = _env(
        "RESPONDER_AUTH_TOKEN_FILE", "file holding the bearer token (a mounted Secret)", None)
    tls_cert_file: str | None = _env("RESPONDER_TLS_CERT_FILE", "serve HTTPS with this cert",
                                     None)
    tls_key_file: str | None = _env("RESPONDER_TLS_KEY_FILE", "private key of the cert", None)
    tls_client_ca_file: str | None = _env(
        "RESPONDER_TLS_CLIENT_CA_FILE", "require client certs signed by this CA (mutual TLS)",
        None)
    intake: str = _env("RESPONDER_INTAKE",
                       "queue: record durably, reply 202, act in a worker; inline: act before "
                       "replying 200 (simple, but a slow API stalls Falcosidekick)", "queue")
    worker: str = _env("RESPONDER_WORKER",
                       "process: `responder serve` runs the queue in a process of its own "
                       "beside the server; thread: in the serving process; off: intake only "
                       "(run `responder work` yourself)", "process")
    state_dir: str = _env("RESPONDER_STATE_DIR", "directory of the durable event journal",
                          "~/.local/state/falco-responder")
    metrics_dir: str | None = _env(
        "RESPONDER_METRICS_DIR", "where `responder serve` keeps its processes' metrics files: "
        "memory, off the state volume, whose filling must not crash a process "
        "(default /dev/shm, else the system's temporary directory)", None)
    max_pending: int = _env("RESPONDER_MAX_PENDING",
                            "unfinished events kept before the drop policy applies", 100_000)
    drop_policy: str = _env("RESPONDER_DROP_POLICY",
                            "drop-new (keep the first events of a storm) or drop-oldest",
                            "drop-new")
    sync_seconds: float = _env("RESPONDER_SYNC_SECONDS",
                               "interval of the batched fsync (WAL checkpoint)", 0.1)
    max_attempts: int = _env("RESPONDER_MAX_ATTEMPTS",
                             "tries of an event whose actions keep failing transiently", 20)
    lease_seconds: float = _env(
        "RESPONDER_LEASE_SECONDS", "how long a worker holds a claimed event before another "
        "process may take it over (after a crash); longer than one event's slowest actions",
        60.0)
    retention_seconds: float = _env("RESPONDER_RETENTION_SECONDS",
                                    "how long finished events (and their uuids) are kept", 86400)
    # A responder reads and acts (2-3 requests an alert, no watch, no cache), where client-go's
    # 5/10 suit a controller that lists once and then watches (at 5/s, 4 alerts a second
    # queue without end). Burst 60: a burst of 20 alerts of the default table's label and
    # delete (read, PATCH, DELETE) runs at once; 20/s: 6-10 alerts a second after it
    # (bench/run.py --sections time-to-act; README, "Time to act").
    kube_qps: float = _env("RESPONDER_KUBE_QPS",
                           "Kubernetes requests per second for containment (pod reads, "
                           "actions)", 20.0)
    kube_burst: int = _env("RESPONDER_KUBE_BURST", "Kubernetes request burst for containment",
                           60)
    audit_qps: float = _env("RESPONDER_AUDIT_QPS",
                            "audit Event requests per second, a budget of their own beside "
                            "RESPONDER_KUBE_QPS", 10.0)
    audit_burst: int = _env("RESPONDER_AUDIT_BURST", "audit Event request burst", 25)
    redis_url: str | None = _env("RESPONDER_REDIS_URL",
                                 "share idempotency keys, coalescing windows and rate limits "
                                 "between replicas", None, secret=True)
    pod_name: str | None = _env("RESPONDER_POD_NAME", "the responder's own pod (never acted on)",
                                None)
    reload_seconds: float = _env(
        "RESPONDER_RELOAD_SECONDS", "how often to look for a changed action table; 0 = never",
        5.0)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every RESPONDER_* variable; ConfigError names the first bad one."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _convert(f.metadata["env"], raw, _PARSERS[f.name])
        settings = cls(**values)
        settings.validate()
        if settings.namespace is None:
            settings = replace(settings, namespace=_service_account_namespace())
        return settings

    def validate(self) -> None:
        for env, value, allowed in (("RESPONDER_LOG_FORMAT", self.log_format, LOG_FORMATS),
                                    ("RESPONDER_KUBE_CONFIG", self.kube_mode, KUBE_MODES),
                                    ("RESPONDER_LOG_LEVEL", self.log_level, LOG_LEVELS),
                                    ("RESPONDER_INTAKE", self.intake, INTAKES),
                                    ("RESPONDER_WORKER", self.worker, WORKER_MODES),
                                    ("RESPONDER_DROP_POLICY", self.drop_policy, DROP_POLICIES)):
            if value not in allowed:
                raise ConfigError(f"{env}: must be one of {', '.join(allowed)}")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://",
                                                             "unix://")):
            # The URL may hold a password: never echo it.
            raise ConfigError("RESPONDER_REDIS_URL: must start with redis://, rediss:// or "
                              "unix://")
        if not 0 < self.port < 65536:
            raise ConfigError("RESPONDER_PORT: must be between 1 and 65535")
        if self.max_body_bytes < 1024:
            raise ConfigError("RESPONDER_MAX_BODY_BYTES: must be at least 1024")
        if self.auth_token is not None and self.auth_token_file is not None:
            raise ConfigError("RESPONDER_AUTH_TOKEN and RESPONDER_AUTH_TOKEN_FILE: set only one")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("RESPONDER_TLS_CERT_FILE and RESPONDER_TLS_KEY_FILE: set both")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError("RESPONDER_TLS_CLIENT_CA_FILE: needs RESPONDER_TLS_CERT_FILE too")
        for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "auth_token_file"):
            _check_readable(self, name)

    @property
    def token(self) -> str | None:
        """The bearer token, from the variable or the file; None when token auth is off."""
        if self.auth_token_file:
            return read_secret_file("RESPONDER_AUTH_TOKEN_FILE", self.auth_token_file)
        return self.auth_token

    def describe(self) -> dict[str, Any]:
        """Effective settings for the start-up log, secrets masked."""
        return {f.metadata["env"]: ("***" if f.metadata["secret"] and getattr(self, f.name)
                                    else getattr(self, f.name)) for f in fields(self)}


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _parse_positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _parse_non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _parse_positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError("must be a positive number")
    return value


_PARSERS: dict[str, Callable[[str], Any]] = {
    "host": str, "port": int, "actions_file": str, "force_dry_run": _parse_bool,
    "max_body_bytes": _parse_positive_int, "log_format": str.lower, "log_level": str.upper,
    "kube_mode": str.lower, "kube_timeout": _parse_positive_float, "namespace": str,
    "workers": _parse_positive_int, "threads": _parse_positive_int,
    "auth_token": str.strip, "auth_token_file": str, "tls_cert_file": str, "tls_key_file": str,
    "tls_client_ca_file": str, "reload_seconds": _parse_non_negative_float,
    "intake": str.lower, "worker": str.lower, "state_dir": str, "max_pending": _parse_positive_int,
    "metrics_dir": str,
    "drop_policy": str.lower, "sync_seconds": _parse_positive_float,
    "max_attempts": _parse_positive_int, "retention_seconds": _parse_positive_float,
    "lease_seconds": _parse_positive_float,
    "kube_qps": _parse_positive_float, "kube_burst": _parse_positive_int, "redis_url": str,
    "audit_qps": _parse_positive_float, "audit_burst": _parse_positive_int,
    "pod_name": str,
}


def _convert(name: str, raw: str, parser: Callable[[str], Any]) -> Any:
    try:
        return parser(raw)
    except ValueError as exc:
        reason = str(exc) if "must" in str(exc) else f"cannot parse {raw!r}"
        raise ConfigError(f"{name}: {reason}") from None


def _check_readable(settings: Settings, name: str) -> None:
    path = getattr(settings, name)
    env = next(f.metadata["env"] for f in fields(settings) if f.name == name)
    if path is not None and not os.access(path, os.R_OK):
        raise ConfigError(f"{env}: cannot read {path}")


def read_secret_file(env: str, path: str) -> str:
    """The stripped text of a mounted secret file; ConfigError (naming `env`) otherwise."""
    try:
        value = Path(path).read_text("utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{env}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{env}: {path} is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"{env}: {path} is empty")
    return value


def _service_account_namespace() -> str | None:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None
