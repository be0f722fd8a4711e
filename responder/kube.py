"""Connecting to the Kubernetes API: in-cluster, else kubeconfig, else no cluster at all."""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Callable

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from .errors import ConfigError
from .settings import Settings

logger = logging.getLogger(__name__)


def connect(settings: Settings) -> tuple[client.ApiClient | None, str]:
    """An API client per `settings.kubernetes.mode`, and a description of where it points."""
    mode = settings.kubernetes.mode
    if mode in ("auto", "in-cluster"):
        try:
            config.load_incluster_config()
            return client.ApiClient(), "in-cluster service account"
        except ConfigException as exc:
            if mode == "in-cluster":
                raise ConfigError(f"RESPONDER_KUBE_CONFIG=in-cluster: {exc}") from None
    if mode in ("auto", "kubeconfig"):
        path = os.environ.get("KUBECONFIG", "~/.kube/config")
        try:
            return config.new_client_from_config(), f"kubeconfig {path}"
        except (ConfigException, OSError) as exc:
            if mode == "kubeconfig":
                raise ConfigError(f"RESPONDER_KUBE_CONFIG=kubeconfig ({path}): {exc}") from None
    return None, "no cluster (every action is reported as would-run)"


class ThrottledApiClient(client.ApiClient):
    """An ApiClient that takes a token from a bucket before every request, as client-go's
    QPS/burst limiter does, so a storm cannot stampede the API server."""

    def __init__(self, configuration: client.Configuration,
                 throttle: Callable[[], None] | None = None):
        super().__init__(configuration)
        self.throttle = throttle

    @classmethod
    def wrap(cls, api: client.ApiClient, throttle: Callable[[], None]) -> ThrottledApiClient:
        return cls(api.configuration, throttle)

    def call_api(self, *args, **kwargs):
        if self.throttle:
            self.throttle()
        return super().call_api(*args, **kwargs)


def api_reachable(api: client.ApiClient, timeout: float) -> str | None:
    """None when the API server answers /version, else why not (shown by /readyz)."""
    try:
        client.VersionApi(api).get_code(_request_timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any failure means "unreachable", said plainly
        return f"Kubernetes API not reachable: {type(exc).__name__}"
    return None


PROBE_SECONDS = 10.0  # how often the background probe asks the API server for /version
PROBE_TIMEOUT = 2.0  # per attempt; with no retries, also the longest one check takes
NOT_CHECKED = "not checked yet"


class ApiProbe:
    """Whether the API server answers, asked by a thread of its own every `interval`
    seconds and read by /readyz from memory. A probe request must never wait on the API:
    in a blackhole (a listener that accepts and never answers) one check takes `timeout`,
    and urllib3's default three retries made it four times that, longer than the kubelet's
    probe timeout; every /readyz would also hold one of the few request threads meanwhile.
    The check uses a client of its own with no retries."""

    def __init__(self, api: client.ApiClient, interval: float = PROBE_SECONDS,
                 timeout: float = PROBE_TIMEOUT):
        configuration = copy.copy(api.configuration)
        configuration.retries = 0
        self._api = client.ApiClient(configuration)
        self.interval = interval
        self.timeout = timeout
        self.problem: str | None = NOT_CHECKED
        self.checked_at: float | None = None  # time.monotonic() of the last answer
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def start(self) -> ApiProbe:
        """Start the thread (again, in a forked child, where the parent's is gone)."""
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="kube-api-probe",
                                                daemon=True)
                self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check()
            self._stop.wait(self.interval)

    def check(self) -> None:
        problem = api_reachable(self._api, self.timeout)
        if problem != self.problem and self.problem != NOT_CHECKED:
            logger.warning("Kubernetes API %s", "reachable again" if problem is None
                           else f"check failed: {problem}")
        self.problem, self.checked_at = problem, time.monotonic()

    def state(self) -> dict[str, object]:
        """What /readyz shows: `reachable` or why not, and how long ago that was found."""
        age = None if self.checked_at is None else round(time.monotonic() - self.checked_at, 1)
        return {"kubernetes_api": self.problem or "reachable", "kubernetes_api_checked_ago": age}

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._thread = None
