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
    threads: int = _env("RESPONDER_THREADS", "threads per gunicorn worker", 4)

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
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"RESPONDER_LOG_FORMAT: must be one of {', '.join(LOG_FORMATS)}")
        if self.kube_mode not in KUBE_MODES:
            raise ConfigError(f"RESPONDER_KUBE_CONFIG: must be one of {', '.join(KUBE_MODES)}")
        if not 0 < self.port < 65536:
            raise ConfigError("RESPONDER_PORT: must be between 1 and 65535")
        if self.max_body_bytes < 1024:
            raise ConfigError("RESPONDER_MAX_BODY_BYTES: must be at least 1024")

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
}


def _convert(name: str, raw: str, parser: Callable[[str], Any]) -> Any:
    try:
        return parser(raw)
    except ValueError as exc:
        reason = str(exc) if "must" in str(exc) else f"cannot parse {raw!r}"
        raise ConfigError(f"{name}: {reason}") from None


def _service_account_namespace() -> str | None:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None
