"""The shipped deployment keeps its cluster-wide promises: its two replicas share one state
through the Redis the manifests deploy (manifests/redis/, a kustomize component the default
uses), reachable only from the responder's pods."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from responder.settings import Settings
from responder.shared import RedisState, allow_in_window

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
    for mount in container["volumeMounts"]:  # writable scratch, or its password read-only
        volume = volumes[mount["name"]]
        assert "emptyDir" in volume or ("secret" in volume and mount["readOnly"] is True)


def redis_command(port: int, *words: str) -> bytes:
    """One command in RESP, its raw reply."""
    request = f"*{len(words)}\r\n".encode() + b"".join(
        f"${len(w)}\r\n{w}\r\n".encode() for w in words)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(request)
        return sock.recv(4096)


PASSWORD = "manifest-test-pw-8c1e"
ADMIN = "test-admin-pw-31d0"


def shipped_command(container: dict, mounted: dict[str, Path]) -> list[str]:
    """The container's command and arguments, its mount paths moved to `mounted` (by volume
    name): the shipped start script runs as it would in the pod."""
    paths = {m["mountPath"]: str(mounted[m["name"]]) for m in container["volumeMounts"]}
    command = []
    for word in [*container["command"], *container["args"]]:
        for path in sorted(paths, key=len, reverse=True):
            word = word.replace(path, paths[path])
        command.append(word)
    return command


def wait_for_redis(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            redis_command(port, "PING")
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(proc.communicate(timeout=5)[0].decode(errors="replace"))


@pytest.fixture(scope="module")
def shipped_redis(redis_pod, tmp_path_factory):
    """The shipped Redis container's command, run on loopback with its password mounted."""
    redis_server_binary()
    (container,) = redis_pod["containers"]
    base = tmp_path_factory.mktemp("shipped-redis")
    mounted = {m["name"]: base / m["name"] for m in container["volumeMounts"]}
    for path in mounted.values():
        path.mkdir()
    (secret,) = [v["secret"] for v in redis_pod["volumes"] if "secret" in v]
    (mounted_secret,) = [mounted[v["name"]] for v in redis_pod["volumes"] if "secret" in v]
    (mounted_secret / "password").write_text(PASSWORD + "\n")
    port = free_port()
    # A test-only admin user, to read the configuration: the shipped one has none.
    proc = subprocess.Popen([*shipped_command(container, mounted), "--port", str(port),
                             "--bind", "127.0.0.1", "--dir", str(base),
                             "--user", "test-admin", "on", f">{ADMIN}", "~*", "+@all"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_redis(proc, port)
        yield {"port": port, "secret": secret, "password_file": mounted_secret / "password",
               "mounted": mounted, "container": container}
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def authed(port: int, *words: str, user: str = "falco-responder",
           password: str = PASSWORD) -> bytes:
    """One command after AUTH as `user` (the shipped ACL user), in one connection."""
    request = b""
    for command in (("AUTH", user, password), words):
        request += f"*{len(command)}\r\n".encode() + b"".join(
            f"${len(w)}\r\n{w}\r\n".encode() for w in command)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(request)
        reply = b""
        while reply.count(b"\r\n") < 2 and (chunk := sock.recv(4096)):
            reply += chunk
    assert reply.startswith(b"+OK\r\n"), reply
    return reply[len(b"+OK\r\n"):]


def test_shipped_redis_keeps_the_shipped_settings_and_nothing_on_disk(shipped_redis):
    port = shipped_redis["port"]

    def config(name: str) -> bytes:
        return authed(port, "CONFIG", "GET", name, user="test-admin", password=ADMIN)

    assert b"volatile-lru" in config("maxmemory-policy")
    assert b"no" in config("appendonly")
    assert config("save").endswith(b"$0\r\n\r\n")  # no snapshots


def test_shipped_redis_requires_a_password(shipped_redis):
    port = shipped_redis["port"]
    assert redis_command(port, "PING").startswith(b"-NOAUTH")
    assert redis_command(port, "SET", "falco-responder:bucket:kube-api", "x").startswith(
        b"-NOAUTH")
    assert redis_command(port, "AUTH", "falco-responder", "wrong").startswith(b"-WRONGPASS")
    assert redis_command(port, "AUTH", PASSWORD).startswith(b"-WRONGPASS")  # default: off
    assert authed(port, "PING") == b"+PONG\r\n"


def test_shipped_acl_user_reaches_only_the_responders_keys_and_commands(shipped_redis):
    port = shipped_redis["port"]
    assert authed(port, "SET", "falco-responder:x", "1") == b"+OK\r\n"
    assert authed(port, "SET", "other-app:x", "1").startswith(b"-NOPERM")
    for command in (("FLUSHALL",), ("CONFIG", "SET", "requirepass", ""), ("KEYS", "*"),
                    ("ACL", "LIST"), ("SCRIPT", "FLUSH"), ("SHUTDOWN",)):
        assert authed(port, *command).startswith(b"-NOPERM"), command


def shipped_state(shipped_redis, responder) -> RedisState:
    """The responder's shared state on the shipped Redis, as the Deployment's env sets it."""
    env = env_of(responder["spec"]["template"]["spec"]["containers"][0])
    settings = Settings.from_env({
        "RESPONDER_REDIS_URL": f"redis://127.0.0.1:{shipped_redis['port']}/0",
        "RESPONDER_REDIS_USERNAME": env["RESPONDER_REDIS_USERNAME"]["value"],
        "RESPONDER_REDIS_PASSWORD_FILE": str(shipped_redis["password_file"])})
    storage = settings.storage
    return RedisState(storage.redis_url, username=storage.redis_username,
                      password=storage.redis_password)


def test_the_responder_works_under_the_shipped_acl_with_the_shipped_settings(shipped_redis,
                                                                           responder):
    # Every SharedState call, as the deployment's env configures it: proves the ACL grants
    # each command the responder's Lua scripts and calls need.
    state = shipped_state(shipped_redis, responder)
    try:
        state.check()
        assert state.first_seen("u-1", 5) is True and state.first_seen("u-1", 5) is False
        state.forget("u-1")
        assert state.open_window("shop/web", 5, "u-1") == 1
        assert state.open_window("shop/web", 5, "u-2") == 2
        state.close_window("shop/web", "u-1")
        assert state.take_token("kube-api", 10, 2) == 0
        token = state.reserve_in_window("pod-deletions", 2, 60, "shop/web")
        state.settle_in_window("pod-deletions", token, "shop/web", happened=True)
        assert allow_in_window(state, "pod-deletions", 2, 60, "shop/db") is True
        assert allow_in_window(state, "pod-deletions", 2, 60, "shop/x") is False
        lock = state.try_lock("cordon", 5)
        assert lock and state.try_lock("cordon", 5) is None
        assert state.unlock("cordon", lock) is True
    finally:
        state.close()


def test_the_responder_mounts_the_password_redis_uses(responder, redis_pod, shipped_redis):
    spec = responder["spec"]["template"]["spec"]
    env = env_of(spec["containers"][0])
    path = Path(env["RESPONDER_REDIS_PASSWORD_FILE"]["value"])
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts[str(path.parent)]]["secret"]["secretName"] == \
        shipped_redis["secret"]["secretName"]
    assert path.name == "password"
    assert not volumes[mounts[str(path.parent)]]["secret"].get("optional", False)
    assert "RESPONDER_REDIS_PASSWORD" not in env  # only ever from the file


def test_the_password_is_on_no_command_line_in_no_env_and_not_on_disk(shipped_redis):
    container = shipped_redis["container"]
    assert PASSWORD not in " ".join(shipped_command(container, shipped_redis["mounted"]))
    assert not any("PASS" in e["name"] for e in container.get("env", []))
    written = [p.read_text() for path in shipped_redis["mounted"].values()
               for p in path.iterdir() if p.name != "password"]
    assert written and not any(PASSWORD in text for text in written)


def test_the_readiness_probe_logs_in(shipped_redis):
    container = shipped_redis["container"]
    probe = shipped_command({**container, "args": [],
                             "command": container["readinessProbe"]["exec"]["command"]},
                            shipped_redis["mounted"])
    probe[-1] = probe[-1].replace("redis-cli ", f"redis-cli -p {shipped_redis['port']} ")
    assert subprocess.run(probe, timeout=10, check=False).returncode == 0
    (shipped_redis["password_file"].parent / "wrong").write_text("nope")
    wrong = [w.replace("/password", "/wrong") for w in probe]
    assert subprocess.run(wrong, timeout=10, check=False,
                          capture_output=True).returncode != 0


@pytest.mark.parametrize("password", ["", "has space"], ids=["empty", "whitespace"])
def test_shipped_redis_refuses_to_start_with_an_unusable_password(redis_pod, tmp_path,
                                                                  password):
    redis_server_binary()
    (container,) = redis_pod["containers"]
    mounted = {m["name"]: tmp_path / m["name"] for m in container["volumeMounts"]}
    for path in mounted.values():
        path.mkdir()
    (secret,) = [mounted[v["name"]] for v in redis_pod["volumes"] if "secret" in v]
    (secret / "password").write_text(password)
    result = subprocess.run([*shipped_command(container, mounted), "--port", str(free_port()),
                             "--bind", "127.0.0.1"], capture_output=True, text=True,
                            timeout=10, check=False)
    assert result.returncode != 0 and "password" in result.stderr


def test_verdicts_and_undos_pass_between_replicas_under_the_shipped_acl(shipped_redis,
                                                                       responder):
    # The relay's commands (GET/SET in a Lua script, MGET, pipelined SETs, RPUSH,
    # BLPOP, PEXPIRE) under the shipped ACL user, as the deployment's env configures it.
    from responder.relay import Relay

    state = shipped_state(shipped_redis, responder)
    holder = Relay(state.redis, state.prefix, "replica-a")
    other = Relay(state.redis, state.prefix, "replica-b")
    try:
        holder.publish_awaiting("acl-1", {"deadline": time.time() + 60, "rules": ["r"],
                                          "planned": []})
        assert other.awaiting("acl-1")["owner"] == "replica-a"
        verdict = {"decision": "approved", "by": "alice", "via": "http", "at": 1.0}
        assert other.first_verdict("acl-1", verdict, time.time() + 60) == (True, verdict)
        assert holder.first_verdict("acl-1", {**verdict, "by": "x"}, time.time() + 60)[0] is \
            False
        assert holder.verdicts(["acl-1", "acl-2"]) == {"acl-1": verdict}
        holder.publish_held([("acl-1", True), ("acl-2", False)], 60)
        assert other.holder("acl-1") == "replica-a" and other.holder("acl-2") is None
        assert other.request_undo("replica-a", "acl-1", "bob", wait=0.1) is None
        request = holder.next_undo_request()
        assert request["uuid"] == "acl-1" and request["by"] == "bob"
        holder.answer(request["reply"], {"status": 200, "answer": {"outcome": "undone"}})
        # Reads: where (and the holder's liveness), the read-request list.
        assert other.where("acl-2") is None  # the holder's read server has not said alive
        assert other.request_read("replica-a", "acl-2", "status", wait=0.1) is None
        request = holder.next_read_request()  # marks the holder alive, takes the request
        assert other.where("acl-2") == "replica-a"
        assert (request["uuid"], request["what"]) == ("acl-2", "status")
        holder.answer(request["reply"], {"status": 200, "answer": {"state": "done"}})
    finally:
        state.close()
