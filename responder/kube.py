"""Connecting to the Kubernetes API: in-cluster, else kubeconfig, else no cluster at all."""

from __future__ import annotations

import logging
import os
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
