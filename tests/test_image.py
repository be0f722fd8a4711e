"""The Dockerfile's shape, and its exact entrypoint serving events from a wheel of the project.

`docker build` cannot run in the test environment, so the image is approximated: the files the
builder stage COPYs are built into a wheel, installed into a fresh virtualenv, and the final
stage's ENTRYPOINT is run from that virtualenv's bin with the Dockerfile's ENV: once plain,
once with the Deployment's TLS and token settings (certificates from scripts/gen-certs.sh).
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import site
import socket
import ssl
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from responder.journal import EventStore
from responder.server import gunicorn_options
from responder.settings import Settings

from .conftest import recorded_events

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
VENV_IN_IMAGE = "/opt/venv"
APP_SPEC = "responder.app:create_app()"
# Answers Falcosidekick counts as delivered: 200 when acted on inline, 202 when queued.
ACCEPTED = (200, 202)


# --- reading the Dockerfile --------------------------------------------------------------

@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their (KEYWORD, arguments) instructions; continuations joined."""
    stages: list[Stage] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue  # Docker drops comment lines, even inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            base, _, name = re.sub(r"--platform=\S+\s*", "", args).partition(" AS ")
            stages.append(Stage(base.strip(), name.strip() or None))
        else:
            stages[-1].instructions.append((keyword.upper(), args.strip()))
    return stages


def exec_form(args: str) -> list[str]:
    """An exec-form (JSON array) instruction's argv; fails the test for shell form."""
    try:
        argv = json.loads(args)
    except ValueError:
        pytest.fail(f"not exec form (a JSON array): {args}")
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), args
    return argv


def entrypoint_argv(stage: Stage) -> list[str]:
    """ENTRYPOINT followed by CMD, as Docker combines them (the last of each counts)."""
    entry = stage.args("ENTRYPOINT")
    cmd = stage.args("CMD")
    return (exec_form(entry[-1]) if entry else []) + (exec_form(cmd[-1]) if cmd else [])


def option(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def env_pairs(stage: Stage) -> list[tuple[str, str]]:
    pairs = []
    for args in stage.args("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            pairs.append((key, value))
    return pairs


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages) -> Stage:
    return stages[-1]


# --- the Dockerfile's shape --------------------------------------------------------------

def test_dockerfile_has_a_builder_and_a_slim_runtime_stage(stages):
    assert len(stages) == 2
    builder, final = stages
    assert builder.name, "the builder stage needs a name for COPY --from"
    assert final.base == "python:3.11-slim"
    assert builder.base == final.base, "the venv's interpreter path must exist in both"


def test_builder_makes_a_venv_at_opt_venv_and_installs_the_project(stages):
    runs = " && ".join(stages[0].args("RUN"))
    assert f"python -m venv {VENV_IN_IMAGE}" in runs
    assert re.search(rf"{VENV_IN_IMAGE}/bin/pip install (\S+ )*\.(\s|$)", runs)


def test_final_stage_copies_only_the_venv(stages, final):
    assert final.args("ADD") == []
    assert final.args("COPY") == [f"--from={stages[0].name} {VENV_IN_IMAGE} {VENV_IN_IMAGE}"]
    assert final.args("RUN") == [], "the runtime stage should not build anything"


def test_final_stage_runs_as_a_numeric_non_root_user(final):
    users = final.args("USER")
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or gid.isdigit(), users[-1]


def test_entrypoint_is_responder_serve_in_exec_form(final):
    argv = entrypoint_argv(final)
    assert argv == ["responder", "serve"]
    assert final.args("EXPOSE") == ["2801"]


def test_the_entrypoints_server_is_gunicorns_event_loop_on_2801_with_no_writes_to_root():
    options = gunicorn_options(Settings.from_env({}))
    assert options["worker_class"] == "responder.bridge.BufferedWorker"
    assert options["bind"] == "0.0.0.0:2801"
    assert (options["workers"], options["threads"]) == (1, 2)  # as the Dockerfile says
    assert options["worker_tmp_dir"] == "/dev/shm" and options["control_socket_disable"]


def test_python_writes_no_bytecode_and_no_buffered_output(final):
    env = dict(env_pairs(final))
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"


# --- the entrypoint, run for real ----------------------------------------------------------

def copy_build_context(builder: Stage, dest: Path) -> None:
    """Copy what the builder stage COPYs from the repository, into `dest` as its WORKDIR."""
    for args in builder.args("COPY"):
        *sources, target = shlex.split(args)
        assert not any(s.startswith("--") for s in sources), args
        into = dest / target
        for source in sources:
            for path in map(Path, glob.glob(str(ROOT / source))):
                where = into / path.name if target.endswith("/") or len(sources) > 1 else into
                where.parent.mkdir(parents=True, exist_ok=True)
                if path.is_dir():
                    shutil.copytree(path, where, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(path, where)


def make_venv(venv: Path, wheel: Path) -> None:
    """A venv holding the wheel, with the running interpreter's packages as its dependencies."""
    run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    python = venv / "bin" / "python"
    # --system-site-packages only reaches the base interpreter; when the tests themselves run
    # in a virtualenv (CI), its packages are where flask, gunicorn & co. live. Plain path lines
    # come after the venv's own site-packages, so the wheel's `responder` still wins.
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    parents = dict.fromkeys([*site.getsitepackages(), sysconfig.get_path("purelib"),
                             sysconfig.get_path("platlib")])
    Path(purelib.strip(), "zz-test-parent-env.pth").write_text("\n".join(parents) + "\n")
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)])


def run(argv: list[str], **kwargs) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False,
                            **kwargs)
    assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Image:
    """The final stage's recipe, with /opt/venv stood in for by a local virtualenv."""

    final: Stage
    venv: Path

    def argv(self, port: int) -> list[str]:
        """The Dockerfile's argv from the venv's bin, listening on `port` instead of 2801."""
        argv = [*entrypoint_argv(self.final), "--port", str(port)]
        return [str(self.venv / "bin" / argv[0]), *argv[1:]]

    def env(self, home: Path, extra: dict[str, str]) -> dict[str, str]:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "KUBECONFIG": str(home / "no-kubeconfig"),
            "RESPONDER_KUBE_CONFIG": "none",
            # The table the Deployment mounts, so the shipped table is served too.
            "RESPONDER_ACTIONS_FILE": str(ROOT / "manifests" / "actions.yaml"),
            # The event journal, on a volume as in the Deployment (the root FS is read-only).
            "RESPONDER_STATE_DIR": str(home.parent / "state"),
        }
        for key, value in env_pairs(self.final):
            env[key] = value.replace(VENV_IN_IMAGE, str(self.venv)).replace("$PATH", env["PATH"])
        return {**env, **extra}


@pytest.fixture(scope="module")
def image(stages, final, tmp_path_factory) -> Image:
    tmp = tmp_path_factory.mktemp("image")
    context, wheels = tmp / "src", tmp / "wheels"
    context.mkdir()
    copy_build_context(stages[0], context)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(context), "-w", str(wheels)])
    make_venv(tmp / "venv", next(wheels.glob("*.whl")))
    return Image(final, tmp / "venv")


def get(url: str, context: ssl.SSLContext | None = None, timeout: float = 5.0,
        headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {},
                                     method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@dataclass
class Served:
    url: str
    port: int
    home: Path
    workdir: Path
    log: Path
    pid: int = 0
    venv_before: set[str] = field(default_factory=set)


@contextmanager
def serving(image: Image, tmp: Path, extra_env: dict[str, str], scheme: str = "http",
            context: ssl.SSLContext | None = None):
    """Run the image's entrypoint until /healthz answers 200; stop it afterwards."""
    home, workdir, log = tmp / "home", tmp / "work", tmp / "server.log"
    home.mkdir()
    workdir.mkdir()
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(image.argv(port), cwd=workdir, env=image.env(home, extra_env),
                                   stdout=out, stderr=subprocess.STDOUT)
    served = Served(f"{scheme}://localhost:{port}", port, home, workdir, log, process.pid)
    try:
        wait_until_healthy(served, process, context)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_healthy(served: Served, process: subprocess.Popen,
                       context: ssl.SSLContext | None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{served.log.read_text()}")
        try:
            if get(served.url + "/healthz", context, timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"no 200 from /healthz within 60 s:\n{served.log.read_text()}")


def post_event(served: Served, context: ssl.SSLContext | None = None,
               token: str | None = None) -> tuple[int, bytes]:
    """The first recorded event, sent the way Falcosidekick's webhook output sends it."""
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "Falcosidekick"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = (json.dumps(recorded_events()[0]) + "\n").encode()
    return get(served.url + "/", context, timeout=10, headers=headers, data=body)


# --- plain HTTP, as `docker run` without TLS settings ---------------------------------------

@pytest.fixture(scope="module")
def served(image, tmp_path_factory):
    venv_before = tree(image.venv)
    with serving(image, tmp_path_factory.mktemp("plain"), {}) as served:
        served.venv_before = venv_before
        yield served


@pytest.mark.slow
def test_the_venv_runs_the_wheel_not_the_source_tree(image, served):
    where = run([str(image.venv / "bin" / "python"), "-c",
                 "import responder; print(responder.__file__)"], cwd=served.workdir)
    assert Path(where.strip()).is_relative_to(image.venv)


@pytest.mark.slow
def test_entrypoint_answers_healthz(served):
    status, body = get(served.url + "/healthz")
    assert status == 200
    assert json.loads(body) == {"status": "ok"}


@pytest.mark.slow
def test_entrypoint_answers_a_recorded_event_with_json(served):
    status, body = post_event(served)
    assert status in ACCEPTED, body
    reply = json.loads(body)
    assert reply["rule"] == recorded_events()[0]["rule"]
    # The image's worker processes it; no cluster is configured, so nothing changed.
    done = wait_done(served, reply["status_url"])
    assert done["decisions"] and all(d["outcome"] in ("would-run", "skipped")
                                     for d in done["decisions"])


@pytest.mark.slow
def test_an_idle_kept_alive_connection_outlives_the_senders_idle_timeout(served):
    # Falcosidekick reuses a connection idle for up to 90 s and never resends a POST: the
    # server must not be the side that closes it, or an event sent as it closes is lost.
    conn = http.client.HTTPConnection("localhost", served.port, timeout=10)

    def post(uuid: str) -> int:
        body = json.dumps({**recorded_events()[0], "uuid": uuid}).encode()
        conn.request("POST", "/", body, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        reply.read()
        return reply.status

    try:
        uuids = ["7f1c2a9e-0000-4000-8000-00000000ka01", "7f1c2a9e-0000-4000-8000-00000000ka02"]
        assert post(uuids[0]) in ACCEPTED
        first = conn.sock
        time.sleep(3)  # longer than gunicorn's default keep-alive (2 s)
        assert post(uuids[1]) in ACCEPTED
        assert conn.sock is first  # the same connection answered both: no reconnect
    finally:
        conn.close()
    for uuid in uuids:  # both taken, and the queue left as the next test expects it
        wait_done(served, f"/events/{uuid}")


def wait_done(served: Served, status_url: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while (done := json.loads(get(served.url + status_url)[1]))["state"] != "done":
        assert time.monotonic() < deadline, done
        time.sleep(0.1)
    return done


@pytest.mark.slow
def test_the_servers_metrics_add_up_both_processes(served):
    """Events are counted by the server, outcomes by the queue worker; one scrape has both."""
    status, body = post_event(served)
    wait_done(served, json.loads(body)["status_url"])
    text = get(served.url + "/metrics")[1].decode()
    assert re.search(r'^responder_events_received_total\{[^}]*\} [1-9]', text, re.M), text
    assert re.search(r'^responder_action_outcomes_total\{action="[^"]+",outcome="would-run"\} '
                     r'[1-9]', text, re.M), text
    assert re.search(r"^responder_queue_depth 0\.0$", text, re.M), text


@pytest.mark.slow
def test_a_killed_queue_worker_is_restarted_and_takes_what_waited(image, tmp_path):
    with serving(image, tmp_path, {}) as served:
        (worker,) = [pid for pid in children(served.pid) if b"work" in cmdline(pid)]
        os.kill(worker, signal.SIGKILL)
        status, body = post_event(served)
        assert status in ACCEPTED, body
        wait_done(served, json.loads(body)["status_url"], timeout=30)
        now = children(served.pid)
        assert len(now) == 2 and worker not in now
    # SIGTERM to the parent stopped both children before it exited.
    assert not any(Path(f"/proc/{pid}").exists() for pid in now)


@pytest.mark.slow
def test_a_graceful_stop_leaves_nothing_accepted_unfinished(image, tmp_path):
    # Stopped moments after start: the queue worker may still be importing when SIGTERM
    # comes, and must drain all the same.
    with serving(image, tmp_path, {}) as served:
        uuids = []
        for n in range(200):
            event = dict(recorded_events()[0], uuid=f"stop-{n}")
            status, body = get(served.url + "/", data=json.dumps(event).encode(),
                               headers={"Content-Type": "application/json"})
            assert status in ACCEPTED, body
            uuids.append(event["uuid"])
    # serving() sent SIGTERM and waited: the server stopped, then the worker finished.
    store = EventStore(tmp_path / "state")
    try:
        states = {uuid: (store.status(uuid) or {}).get("state") for uuid in uuids}
        assert set(states.values()) == {"done"}, {k: v for k, v in states.items() if v != "done"}
        assert store.pending() == 0
    finally:
        store.close()


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.slow
def test_entrypoint_writes_nothing_but_its_tmpfs(image, served):
    """What a read-only root filesystem needs: no files in the venv, HOME or working dir
    (the event journal goes to RESPONDER_STATE_DIR, a volume in the Deployment)."""
    assert get(served.url + "/readyz")[0] == 200
    assert tree(image.venv) == served.venv_before
    assert tree(served.home) == set()
    assert tree(served.workdir) == set()


# --- mutual TLS and a token, as the Deployment configures it ------------------------------

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    if not shutil.which("openssl"):
        if os.environ.get("CI"):
            pytest.fail("openssl not found")
        pytest.skip("openssl not found")
    out = tmp_path_factory.mktemp("certs") / "out"
    run(["bash", str(ROOT / "scripts" / "gen-certs.sh"), "-o", str(out)])
    return out


def client_context(certs: Path, cert: str | None = "client") -> ssl.SSLContext:
    """Falcosidekick's side: trust our CA, present its client certificate."""
    context = ssl.create_default_context(cafile=certs / "ca.crt")
    if cert:
        context.load_cert_chain(certs / f"{cert}.crt", certs / f"{cert}.key")
    return context


@pytest.fixture(scope="module")
def deployment_env(certs, tmp_path_factory) -> dict[str, str]:
    """The Deployment's file settings, pointed at generated certificates and a token file."""
    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / "auth-token").write_text(TOKEN + "\n")
    return {"RESPONDER_TLS_CERT_FILE": str(certs / "tls.crt"),
            "RESPONDER_TLS_KEY_FILE": str(certs / "tls.key"),
            "RESPONDER_TLS_CLIENT_CA_FILE": str(certs / "ca.crt"),
            "RESPONDER_AUTH_TOKEN_FILE": str(secrets / "auth-token")}


@pytest.fixture(scope="module")
def served_tls(image, certs, deployment_env, tmp_path_factory):
    with serving(image, tmp_path_factory.mktemp("tls"), deployment_env, "https",
                 client_context(certs)) as served:
        yield served


@pytest.mark.slow
def test_entrypoint_takes_an_event_over_mutual_tls_with_the_token(served_tls, certs):
    status, body = post_event(served_tls, client_context(certs), TOKEN)
    assert status in ACCEPTED, body
    assert json.loads(body)["rule"] == recorded_events()[0]["rule"]


@pytest.mark.slow
def test_entrypoint_refuses_an_event_without_the_token(served_tls, certs):
    status, _ = post_event(served_tls, client_context(certs))
    assert status == 401


@pytest.mark.slow
def test_entrypoint_refuses_a_client_without_a_certificate(served_tls, certs):
    with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
        post_event(served_tls, client_context(certs, cert=None), TOKEN)


@pytest.mark.slow
@pytest.mark.parametrize("probe", ["livenessProbe", "readinessProbe"])
def test_deployment_probes_pass_against_the_entrypoint(served_tls, deployment_env, probe):
    deployment = yaml.safe_load((ROOT / "manifests" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = container[probe]["exec"]["command"]
    assert command[0] == "python"
    env = {"PATH": os.environ["PATH"], "RESPONDER_PORT": str(served_tls.port), **deployment_env}
    result = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
