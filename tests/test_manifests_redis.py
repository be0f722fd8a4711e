"""The shipped deployment keeps its cluster-wide promises: its two replicas share one state
through the Redis the manifests deploy (manifests/redis/, a kustomize component the default
uses), reachable only from the responder's pods."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from urllib.parse import urlsplit

import pytest

from responder.settings import Settings

from .redisserver import redis_server_binary
from .serving import free_port
from .test_manifests import APP_LABELS, MANIFESTS, REDIS, env_of, is_redis, only, rendered_all

__all__ = ["rendered_all"]  # the module fixture, shared with test_manifests.py
REDIS_LABELS = {"app.kubernetes.io/name": REDIS}


@pytest.fixture(scope="module")
def redis_objects(rendered_all) -> list[dict]:
    return [o for o in rendered_all if is_redis(o)]


@pytest.fixture(scope="module")
def responder(rendered_all) -> dict:
    return only([o for o in rendered_all if not is_redis(o)], "Deployment")


@pytest.fixture(scope="module")
def redis_pod(redis_objects) -> dict:
    return only(redis_objects, "Deployment")["spec"]["template"]["spec"]


def test_the_default_deploys_redis_with_its_service_and_network_policy(redis_objects):
    assert sorted(o["kind"] for o in redis_objects) == ["Deployment", "NetworkPolicy",
                                                         "Service"]
    assert "redis" in (MANIFESTS / "kustomization.yaml").read_text().split("components:")[1]


def test_several_replicas_only_with_a_shared_state_they_all_use(responder, redis_objects):
    env = env_of(responder["spec"]["template"]["spec"]["containers"][0])
    assert responder["spec"]["replicas"] > 1
    url = urlsplit(env["RESPONDER_REDIS_URL"]["value"])
    service = only(redis_objects, "Service")
    (port,) = service["spec"]["ports"]
    assert (url.scheme, url.hostname, url.port) == ("redis", service["metadata"]["name"],
                                                   port["port"])
    Settings.from_env({"RESPONDER_REDIS_URL": env["RESPONDER_REDIS_URL"]["value"]})


def test_redis_is_one_instance_never_two_at_once(redis_objects):
    spec = only(redis_objects, "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_redis_service_selects_the_redis_pod_and_nothing_of_the_responders(redis_objects,
                                                                         responder):
    deployment, service = only(redis_objects, "Deployment"), only(redis_objects, "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == REDIS_LABELS
    assert REDIS_LABELS.items() <= labels.items()
    assert not APP_LABELS.items() <= labels.items(), "the responder's selectors would match"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (port,) = service["spec"]["ports"]
    assert {"name": port["targetPort"], "containerPort": 6379, "protocol": "TCP"} in \
        container["ports"]


def test_redis_is_reachable_from_the_responder_pods_only_and_reaches_nothing(redis_objects):
    spec = only(redis_objects, "NetworkPolicy")["spec"]
    assert spec["podSelector"]["matchLabels"] == REDIS_LABELS
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert spec["egress"] == []
    (rule,) = spec["ingress"]
    # A podSelector alone: pods of the policy's own namespace, the responder's.
    assert rule["from"] == [{"podSelector": {"matchLabels": APP_LABELS}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]


def test_redis_pod_meets_the_restricted_pod_security_standard(redis_pod):
    assert redis_pod["automountServiceAccountToken"] is False
    assert redis_pod["securityContext"]["runAsNonRoot"] is True
    assert redis_pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = redis_pod["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["readinessProbe"] and container["livenessProbe"]
    volumes = {v["name"]: v for v in redis_pod["volumes"]}
    assert all("emptyDir" in volumes[m["name"]] for m in container["volumeMounts"])


def redis_command(port: int, *words: str) -> bytes:
    """One command in RESP, its raw reply."""
    request = f"*{len(words)}\r\n".encode() + b"".join(
        f"${len(w)}\r\n{w}\r\n".encode() for w in words)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(request)
        return sock.recv(4096)


def test_redis_accepts_the_shipped_arguments_and_keeps_nothing_on_disk(redis_pod):
    (container,) = redis_pod["containers"]
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="redis-args-") as data:
        proc = subprocess.Popen([redis_server_binary(), *container["args"], "--port", str(port),
                                 "--bind", "127.0.0.1", "--dir", data],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if redis_command(port, "PING").startswith(b"+PONG"):
                        break
                except OSError:
                    time.sleep(0.05)
            assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")
            assert b"volatile-lru" in redis_command(port, "CONFIG", "GET", "maxmemory-policy")
            assert b"no" in redis_command(port, "CONFIG", "GET", "appendonly")
            save = redis_command(port, "CONFIG", "GET", "save")
            assert save.endswith(b"$0\r\n\r\n"), save  # no snapshots
        finally:
            proc.terminate()
            proc.communicate(timeout=10)
