"""Settings: parsed once from RESPONDER_* environment variables, typed, failing fast.

Grouped by concern (intake, kubernetes, auth, storage, table, log, slack); each field names
its variable, default and parser in one place, and `envvars.read_fields` is the one reader
of them all (secrets from `<NAME>_FILE` included).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .envvars import (
    BadValue,
    describe,
    non_negative_float,
    one_of,
    parse_bool,
    positive_float,
    positive_int,
    read_fields,
    readable_file,
    setting,
    variables,
)
from .errors import ConfigError
from .evidencestore import check_endpoint_url, check_evidence_url
from .notify.config import SlackConfig

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
PREFIX = "RESPONDER_"


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 < value < 65536:
        raise BadValue("must be between 1 and 65535")
    return value


def _body_bytes(raw: str) -> int:
    value = int(raw)
    if value < 1024:
        raise BadValue("must be at least 1024")
    return value


def _redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        # The URL may hold a password: never echo it.
        raise BadValue("must start with redis://, rediss:// or unix://")
    return raw


@dataclass(frozen=True)
class IntakeSettings:
    """How events come in (the HTTP server) and are worked off (the queue, its worker)."""

    host: str = setting("RESPONDER_HOST", "address to listen on", "0.0.0.0")
    port: int = setting("RESPONDER_PORT", "TCP port to listen on", 2801, _port)
    workers: int = setting("RESPONDER_WORKERS", "gunicorn worker processes", 1, positive_int)
    # Two: the intake is CPU-bound under the GIL, and more threads only contend for it
    # (measured in bench/: 4 threads took 15-25% off the rate at concurrency 8); the second
    # keeps a probe or a scrape answered while an event is in hand.
    threads: int = setting("RESPONDER_THREADS",
                           "threads per gunicorn worker running the app on requests read whole",
                           2, positive_int)
    max_body_bytes: int = setting("RESPONDER_MAX_BODY_BYTES", "largest accepted request body",
                                  1024 * 1024, _body_bytes)
    max_connections: int = setting(
        "RESPONDER_MAX_CONNECTIONS", "open connections per gunicorn worker, TLS handshakes "
        "included; past it a new connection is closed at once. Keep it well below the "
        "open-file limit", 256, positive_int)
    max_buffered_bytes: int = setting(
        "RESPONDER_MAX_BUFFERED_BYTES", "request body bytes one gunicorn worker holds at once "
        "(bodies over 64 KiB count); past it a request gets 503", 32 * 1024 * 1024,
        _body_bytes)
    mode: str = setting("RESPONDER_INTAKE",
                        "queue: record durably, reply 202, act in a worker; inline: act before "
                        "replying 200 (simple, but a slow API stalls Falcosidekick)", "queue",
                        one_of("queue", "inline"))
    worker: str = setting("RESPONDER_WORKER",
                          "process: `responder serve` runs the queue in a process of its own "
                          "beside the server; thread: in the serving process; off: intake "
                          "only (run `responder work` yourself)", "process",
                          one_of("process", "thread", "off"))
    max_pending: int = setting("RESPONDER_MAX_PENDING",
                               "unfinished events kept before the drop policy applies", 100_000,
                               positive_int)
    drop_policy: str = setting("RESPONDER_DROP_POLICY",
                               "drop-new (keep the first events of a storm) or drop-oldest",
                               "drop-new", one_of("drop-new", "drop-oldest"))
    max_attempts: int = setting("RESPONDER_MAX_ATTEMPTS",
                                "tries of an event whose actions keep failing transiently", 20,
                                positive_int)
    lease_seconds: float = setting(
        "RESPONDER_LEASE_SECONDS", "how long a worker holds a claimed event before another "
        "process may take it over (after a crash); longer than one event's slowest actions",
        60.0, positive_float)


@dataclass(frozen=True)
class KubernetesSettings:
    """Which cluster, who the responder is in it, and how hard it may call the API."""

    mode: str = setting("RESPONDER_KUBE_CONFIG",
                        "auto (in-cluster, else kubeconfig, else none), in-cluster, "
                        "kubeconfig or none", "auto",
                        one_of("auto", "in-cluster", "kubeconfig", "none"))
    timeout: float = setting("RESPONDER_KUBE_TIMEOUT", "seconds per Kubernetes API call", 10.0,
                             positive_float)
    namespace: str | None = setting(
        "RESPONDER_NAMESPACE", "the responder's own namespace, always protected; "
        "default: the service account's namespace", None)
    pod_name: str | None = setting("RESPONDER_POD_NAME",
                                   "the responder's own pod (never acted on)", None)
    # A responder reads and acts (no watch, no cache), where client-go's 5/10 suit a
    # controller that lists once and then watches. The packaged table's reverse-shell rule,
    # armed, makes 13 requests an alert (verify, capture 5, isolate with detach 5, label 2):
    # 60/s keeps up with 4 reverse shells a second, and a burst of 120 contains the first 9
    # of a burst at once (kube-scheduler's defaults are 50/100). At 20/60 the same alerts
    # queued for 45 s (bench/run.py --sections time-to-contain; docs/benchmark.md).
    qps: float = setting("RESPONDER_KUBE_QPS",
                         "Kubernetes requests per second for containment (pod reads, actions)",
                         60.0, positive_float)
    burst: int = setting("RESPONDER_KUBE_BURST", "Kubernetes request burst for containment", 120,
                         positive_int)
    audit_qps: float = setting("RESPONDER_AUDIT_QPS",
                               "audit Event requests per second, a budget of their own beside "
                               "RESPONDER_KUBE_QPS", 10.0, positive_float)
    audit_burst: int = setting("RESPONDER_AUDIT_BURST", "audit Event request burst", 25,
                               positive_int)


@dataclass(frozen=True)
class AuthSettings:
    """Who may send events (a bearer token, client certificates, or both) and who may act on
    them (the operator token, else the same)."""

    token: str | None = setting(
        "RESPONDER_AUTH_TOKEN", "bearer token Falcosidekick must send (webhook.customheaders); "
        "or RESPONDER_AUTH_TOKEN_FILE, a file holding it (a mounted Secret)", None,
        secret=True, from_file=True)
    operator_token: str | None = setting(
        "RESPONDER_OPERATOR_TOKEN", "bearer token for people: approve, reject, undo and the "
        "console login. Set, the events token no longer does these (Falcosidekick's config "
        "need not be able to free an isolated pod); or RESPONDER_OPERATOR_TOKEN_FILE", None,
        secret=True, from_file=True)
    tls_cert_file: str | None = setting("RESPONDER_TLS_CERT_FILE",
                                        "serve HTTPS with this cert", None, readable_file)
    tls_key_file: str | None = setting("RESPONDER_TLS_KEY_FILE", "private key of the cert",
                                       None, readable_file)
    tls_client_ca_file: str | None = setting(
        "RESPONDER_TLS_CLIENT_CA_FILE", "require client certs signed by this CA (mutual TLS)",
        None, readable_file)

    @property
    def acting_token(self) -> str | None:
        """What approve, reject, undo and the console login take: the operator token, else
        the events token."""
        return self.operator_token or self.token

    def __post_init__(self) -> None:
        if self.operator_token and self.operator_token == self.token:
            raise ConfigError("RESPONDER_OPERATOR_TOKEN: must differ from RESPONDER_AUTH_TOKEN "
                              "(it keeps approve, reject and undo from whoever sends events)")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("RESPONDER_TLS_CERT_FILE and RESPONDER_TLS_KEY_FILE: set both")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError("RESPONDER_TLS_CLIENT_CA_FILE: needs RESPONDER_TLS_CERT_FILE too")


@dataclass(frozen=True)
class StorageSettings:
    """Where state is kept: the journal on disk, metrics files, the shared Redis."""

    state_dir: str = setting("RESPONDER_STATE_DIR", "directory of the durable event journal",
                             "~/.local/state/falco-responder")
    metrics_dir: str | None = setting(
        "RESPONDER_METRICS_DIR", "where `responder serve` keeps its processes' metrics files: "
        "memory, off the state volume, whose filling must not crash a process "
        "(default /dev/shm, else the system's temporary directory)", None)
    sync_seconds: float = setting("RESPONDER_SYNC_SECONDS",
                                  "interval of the batched fsync (WAL checkpoint)", 0.1,
                                  positive_float)
    retention_seconds: float = setting("RESPONDER_RETENTION_SECONDS",
                                       "how long finished events (and their uuids) are kept",
                                       86400, positive_float)
    redis_url: str | None = setting("RESPONDER_REDIS_URL",
                                    "share idempotency keys, coalescing windows and rate "
                                    "limits between replicas", None, _redis_url, secret=True)
    redis_username: str | None = setting(
        "RESPONDER_REDIS_USERNAME", "Redis ACL user to log in as (with "
        "RESPONDER_REDIS_PASSWORD); unset = the default user", None)
    redis_password: str | None = setting(
        "RESPONDER_REDIS_PASSWORD", "password for the shared Redis (AUTH); use the _FILE form "
        "with a mounted Secret", None, secret=True, from_file=True)
    evidence_url: str | None = setting(
        "RESPONDER_EVIDENCE_URL", "where evidence bundles are kept: file:///dir or "
        "s3://bucket/prefix (boto3; credentials the standard AWS way); unset = evidence/ "
        "under RESPONDER_STATE_DIR", None, check_evidence_url)
    evidence_endpoint_url: str | None = setting(
        "RESPONDER_EVIDENCE_ENDPOINT_URL", "the S3 endpoint of an s3:// evidence store that is "
        "not AWS (MinIO, Ceph); unset = AWS", None, check_endpoint_url)

    def __post_init__(self) -> None:
        if self.redis_url and urlsplit(self.redis_url).password and self.redis_password:
            raise ConfigError("RESPONDER_REDIS_URL holds a password and RESPONDER_REDIS_PASSWORD "
                              "is set: set only one")
        if self.redis_username and not self.redis_password:
            raise ConfigError("RESPONDER_REDIS_USERNAME: needs RESPONDER_REDIS_PASSWORD too")


@dataclass(frozen=True)
class TableSettings:
    """The action table: where it is, how often to look for changes, and the dry-run lock."""

    actions_file: str | None = setting(
        "RESPONDER_ACTIONS_FILE", "action table YAML; unset = the packaged default", None)
    force_dry_run: bool = setting(
        "RESPONDER_DRY_RUN", "true forces dry-run for every rule, whatever the table says",
        False, parse_bool)
    reload_seconds: float = setting(
        "RESPONDER_RELOAD_SECONDS", "how often to look for a changed action table; 0 = never",
        5.0, non_negative_float)


@dataclass(frozen=True)
class LogSettings:
    """How the service logs."""

    format: str = setting("RESPONDER_LOG_FORMAT", "text or json", "text", one_of("text", "json"))
    level: str = setting("RESPONDER_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR", "INFO",
                         one_of("DEBUG", "INFO", "WARNING", "ERROR", normalise=str.upper))


#: The groups of Settings, by attribute.
GROUPS: dict[str, type] = {
    "intake": IntakeSettings, "kubernetes": KubernetesSettings, "auth": AuthSettings,
    "storage": StorageSettings, "table": TableSettings, "log": LogSettings,
}


@dataclass(frozen=True)
class Settings:
    """Everything the service can be told, by concern; each field names its variable."""

    intake: IntakeSettings = field(default_factory=IntakeSettings)
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    table: TableSettings = field(default_factory=TableSettings)
    log: LogSettings = field(default_factory=LogSettings)
    #: None: Slack is off (neither a webhook nor a token is set).
    slack: SlackConfig | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every RESPONDER_* variable; ConfigError names the first bad one."""
        env = os.environ if env is None else env
        groups = {name: group(**read_fields(group, env)) for name, group in GROUPS.items()}
        settings = cls(**groups, slack=SlackConfig.from_env(env))
        if settings.kubernetes.namespace is None:
            kubernetes = replace(settings.kubernetes, namespace=_service_account_namespace())
            settings = replace(settings, kubernetes=kubernetes)
        return settings

    @classmethod
    def of(cls, **values: Any) -> Settings:
        """Settings from Python values, each named as its variable without RESPONDER_, in
        lower case (`state_dir=...`, `kube_qps=...`, `auth_token_file=...`); parsed and
        checked exactly as from the environment. For tests and embedding."""
        env = {f"{PREFIX}{name.upper()}": str(value) for name, value in values.items()
               if value is not None}
        unknown = sorted(set(env) - set(all_variables()))
        if unknown:
            raise TypeError(f"no such setting: {', '.join(unknown)}")
        return cls.from_env(env)

    def describe(self) -> dict[str, Any]:
        """Effective settings for the start-up log, secrets masked (Slack has its own line)."""
        return {name: value for group in GROUPS for name, value in
                describe(getattr(self, group)).items()}


def all_variables() -> dict[str, str]:
    """Every variable the responder reads, to its doc."""
    found: dict[str, str] = {}
    for group in (*GROUPS.values(), SlackConfig):
        found.update(variables(group))
    return found


def _service_account_namespace() -> str | None:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None

