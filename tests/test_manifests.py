"""The Kubernetes manifests render, validate, grant exactly what the actions need, and the
certificate script produces a CA, server and client certificates that complete mutual TLS."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from responder.actions import default_registry
from responder.permissions import required_permissions
from responder.table import load_table, parse_table

from .apiserver import kubectl_binary

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
GEN_CERTS = ROOT / "scripts" / "gen-certs.sh"
NAMESPACE = "falco-responder"
APP_LABELS = {"app.kubernetes.io/name": "falco-responder"}
REDIS = "falco-responder-redis"
# The oldest Kubernetes minor we claim to support, and the newest the schemas know.
KUBE_VERSIONS = ("1.30", latest_version())
SERVICE_DNS_NAMES = {"falco-responder", "falco-responder.falco-responder",
                     "falco-responder.falco-responder.svc",
                     "falco-responder.falco-responder.svc.cluster.local"}


def tool_or_fail(name: str, path: str | None) -> str:
    """The tool's path; missing is a failure in CI and a skip on a workstation."""
    if path:
        return path
    message = f"{name} not found (install the test extras: pip install -e '.[test]')"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def quiet_env(home: Path) -> dict[str, str]:
    """No cluster, no user config: rendering must work offline."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "KUBECONFIG": str(home / "no-kubeconfig")}


def render(directory: Path, home: Path) -> list[dict]:
    kubectl = tool_or_fail("kubectl", kubectl_binary())
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                            text=True, timeout=120, env=quiet_env(home), check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered_all(tmp_path_factory) -> list[dict]:
    """Everything `kubectl apply -k manifests/` creates, the Redis component's too."""
    return render(MANIFESTS, tmp_path_factory.mktemp("kubectl-home"))


def is_redis(obj: dict) -> bool:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/name") == REDIS


@pytest.fixture(scope="module")
def rendered(rendered_all) -> list[dict]:
    """The responder's own objects (the Redis component's are tested in
    test_manifests_redis.py)."""
    return [o for o in rendered_all if not is_redis(o)]


def only(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def deployment(rendered) -> dict:
    return only(rendered, "Deployment")


@pytest.fixture(scope="module")
def pod(deployment) -> dict:
    return deployment["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod) -> dict:
    assert len(pod["containers"]) == 1
    return pod["containers"][0]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


def scalars(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from scalars(value)
    elif isinstance(node, list):
        for value in node:
            yield from scalars(value)
    else:
        yield node


# --- rendering and schema validation ------------------------------------------------------

def test_kustomize_renders_every_object_into_the_responder_namespace(rendered, rendered_all):
    kinds = sorted(o["kind"] for o in rendered)
    assert kinds == sorted(["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                            "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                            "NetworkPolicy"])
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for obj in rendered_all:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_rendered_object_validates_strictly(rendered_all, version):
    for obj in rendered_all:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_the_example_secret_is_valid_but_not_rendered(rendered, version):
    example = yaml.safe_load((MANIFESTS / "secret-example.yaml").read_text())
    kubernetes_validate.validate(example, version, strict=True)
    assert all(o["kind"] != "Secret" for o in rendered)
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert "secret-example.yaml" not in kustomization["resources"]


# --- RBAC ----------------------------------------------------------------------------------

def declared_permissions() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) the registered actions declare, plus the responder's own
    needs (responder.permissions.OWN_RBAC: the audit Events)."""
    return required_permissions(default_registry())


def granted_permissions(role: dict) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_cluster_role_grants_exactly_what_the_registered_actions_declare(rendered):
    role = only(rendered, "ClusterRole")
    assert granted_permissions(role) == declared_permissions()


def test_rbac_has_no_wildcards_no_secrets_and_no_name_or_url_rules(rendered):
    role = only(rendered, "ClusterRole")
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        assert "secrets" not in rule["resources"]
    for obj in rendered:
        assert "*" not in set(scalars(obj)), obj["kind"]


def test_cluster_role_binding_binds_only_the_service_account(rendered):
    binding = only(rendered, "ClusterRoleBinding")
    account = only(rendered, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": only(rendered, "ClusterRole")["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount",
                                    "name": account["metadata"]["name"],
                                    "namespace": NAMESPACE}]


def test_only_the_pod_mounts_the_service_account_token(rendered, pod):
    assert only(rendered, "ServiceAccount")["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == only(rendered, "ServiceAccount")["metadata"]["name"]


# --- the Deployment ------------------------------------------------------------------------

def test_pod_and_container_run_non_root_read_only_without_capabilities(pod, container):
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_deployment_user_is_the_dockerfile_user(container):
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users and users[-1] == str(container["securityContext"]["runAsUser"])


def test_writable_paths_are_emptydirs_for_shm_tmp_the_journal_and_evidence(pod, container):
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"
    state_dir = env_of(container)["RESPONDER_STATE_DIR"]["value"]
    evidence_dir = env_of(container)["RESPONDER_EVIDENCE_URL"]["value"].removeprefix("file://")
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    # Evidence on a volume of its own: bundles filling it never fill the journal's.
    assert writable == {"/dev/shm", "/tmp", state_dir, evidence_dir}
    assert mounts[evidence_dir] is not mounts[state_dir]
    assert all("emptyDir" in mounts[path] for path in writable)


def test_action_table_is_the_generated_configmap_mounted_as_a_directory(rendered, pod,
                                                                         container):
    configmap = only(rendered, "ConfigMap")
    assert configmap["metadata"]["name"].startswith("falco-responder-actions-")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/falco-responder")
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    assert volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    path = Path(env_of(container)["RESPONDER_ACTIONS_FILE"]["value"])
    assert path.parent == Path(mount["mountPath"]) and path.name in configmap["data"]


def test_no_volume_is_mounted_with_subpath(container):
    assert all("subPath" not in m for m in container["volumeMounts"])


def test_every_file_setting_points_into_the_volume_that_provides_it(pod, container):
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    example = yaml.safe_load((MANIFESTS / "secret-example.yaml").read_text())
    keys = {"falco-responder-secrets": set(example["stringData"]),
            "falco-responder-tls": {"tls.crt", "tls.key", "ca.crt"},
            "falco-responder-redis": {"password"}}  # the Redis component's
    files = {n: e["value"] for n, e in env_of(container).items() if n.endswith("_FILE")}
    assert set(files) >= {"RESPONDER_ACTIONS_FILE", "RESPONDER_AUTH_TOKEN_FILE",
                          "RESPONDER_OPERATOR_TOKEN_FILE", "RESPONDER_SLACK_WEBHOOK_URL_FILE",
                          "RESPONDER_TLS_CERT_FILE", "RESPONDER_TLS_KEY_FILE",
                          "RESPONDER_TLS_CLIENT_CA_FILE"}
    for name, value in files.items():
        volume = mounts.get(str(Path(value).parent))
        assert volume is not None, f"{name}={value} is not in a mounted volume"
        if "secret" in volume:
            assert Path(value).name in keys[volume["secret"]["secretName"]], name


def test_optional_secrets_are_optional_and_tls_is_required(pod):
    secrets = {v["secret"]["secretName"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    assert secrets["falco-responder-secrets"]["optional"] is True
    assert not secrets["falco-responder-tls"].get("optional", False)


def test_deployment_env_names_its_namespace_and_pod_and_logs_json(container):
    env = env_of(container)
    assert env["RESPONDER_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["RESPONDER_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["RESPONDER_LOG_FORMAT"]["value"] == "json"
    assert env["RESPONDER_KUBE_CONFIG"]["value"] == "in-cluster"
    assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in env.values()), \
        "secrets are read from files, never from env values"


def test_probes_check_healthz_for_liveness_and_readyz_for_readiness(container):
    assert container["livenessProbe"]["exec"]["command"][-1] == "/healthz"
    assert container["readinessProbe"]["exec"]["command"][-1] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]


# --- Service, PDB, NetworkPolicy ------------------------------------------------------------

def test_service_pdb_and_policy_select_the_deployment_pods(rendered, deployment):
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == APP_LABELS
    assert only(rendered, "Service")["spec"]["selector"] == APP_LABELS
    assert only(rendered, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == APP_LABELS
    assert only(rendered, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"] == APP_LABELS
    assert APP_LABELS.items() <= labels.items()


def test_service_exposes_port_2801_named_https(rendered, container):
    (port,) = only(rendered, "Service")["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("https", 2801, "https")
    assert {"name": "https", "containerPort": 2801, "protocol": "TCP"} in container["ports"]


def test_pdb_leaves_a_replica_when_it_blocks_an_eviction(rendered, deployment):
    pdb = only(rendered, "PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] < deployment["spec"]["replicas"]


def test_network_policy_admits_only_falcosidekick_on_2801(rendered):
    spec = only(rendered, "NetworkPolicy")["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["from"] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "falco"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "falcosidekick"}},
    }]
    assert rule["ports"] == [{"protocol": "TCP", "port": 2801}]


# --- the action table ------------------------------------------------------------------------

def test_generated_configmap_holds_a_valid_dry_run_table(rendered):
    data = only(rendered, "ConfigMap")["data"]
    table = parse_table(data["actions.yaml"], "ConfigMap actions.yaml", default_registry())
    assert table.rules
    assert table.dry_run is True, "the shipped table must not act until someone arms it"
    assert data["actions.yaml"] == (MANIFESTS / "actions.yaml").read_text()


def test_deployed_table_is_the_packaged_default_table():
    registry = default_registry()
    deployed = load_table(MANIFESTS / "actions.yaml", registry)
    packaged = load_table(None, registry)
    assert (deployed.rules, deployed.dry_run, deployed.protected_namespaces) == (
        packaged.rules, packaged.dry_run, packaged.protected_namespaces), \
        "manifests/actions.yaml drifted from responder/default_actions.yaml: copy it over"


# --- Falcosidekick's side ----------------------------------------------------------------------

def test_falcosidekick_values_call_the_service_over_mutual_tls(rendered):
    values = yaml.safe_load((MANIFESTS / "falcosidekick-values.yaml").read_text())
    webhook = values["config"]["webhook"]
    service = only(rendered, "Service")
    port = service["spec"]["ports"][0]["port"]
    assert webhook["address"] == f"https://{service['metadata']['name']}.{NAMESPACE}.svc:{port}/"
    assert webhook["customHeaders"].startswith("Authorization:Bearer ")
    assert webhook["mutualtls"] is True and webhook["checkcert"] is True
    (mount,) = values["extraVolumeMounts"]
    (volume,) = values["extraVolumes"]
    assert mount["mountPath"] == values["config"]["mutualtlsfilespath"] == "/etc/certs"
    assert mount["name"] == volume["name"] and volume["secret"]["secretName"]
    client = values["config"]["mutualtlsclient"]
    assert {Path(p).name for p in client.values()} == {"client.crt", "client.key", "ca.crt"}


# --- scripts/gen-certs.sh -----------------------------------------------------------------------

def openssl_text(*args: str) -> str:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def run_gen_certs(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    tool_or_fail("openssl", shutil.which("openssl"))
    result = subprocess.run(["bash", str(GEN_CERTS), "-o", str(out), *args], capture_output=True,
                            text=True, timeout=120, check=False,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env})
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("certs") / "out"
    run_gen_certs(out)
    return out


def test_gen_certs_writes_the_six_files_with_private_keys(certs):
    names = {p.name for p in certs.iterdir()}
    assert names == {"ca.crt", "ca.key", "tls.crt", "tls.key", "client.crt", "client.key"}
    for key in ("ca.key", "tls.key", "client.key"):
        assert (certs / key).stat().st_mode & 0o077 == 0, key


def test_gen_certs_chain_verifies_with_openssl(certs):
    out = openssl_text("verify", "-CAfile", str(certs / "ca.crt"), str(certs / "tls.crt"),
                       str(certs / "client.crt"))
    assert out.count(": OK") == 2


def test_server_cert_names_the_service_localhost_and_loopback(certs):
    text = openssl_text("x509", "-in", str(certs / "tls.crt"), "-noout", "-ext",
                        "subjectAltName,extendedKeyUsage")
    names = set(re.findall(r"DNS:([^,\s]+)", text))
    assert names == SERVICE_DNS_NAMES | {"localhost"}
    assert "IP Address:127.0.0.1" in text
    assert "TLS Web Server Authentication" in text


def test_client_cert_is_falcosidekicks_for_client_auth_only(certs):
    text = openssl_text("x509", "-in", str(certs / "client.crt"), "-noout", "-subject", "-ext",
                        "extendedKeyUsage")
    assert re.search(r"CN\s*=\s*falcosidekick\b", text)
    usages = text.split("Extended Key Usage:", 1)[1].strip()
    assert usages == "TLS Web Client Authentication"


def test_gen_certs_takes_namespace_and_service_from_options(tmp_path):
    out = tmp_path / "out"
    result = run_gen_certs(out, "-n", "security", "-s", "responder")
    text = openssl_text("x509", "-in", str(out / "tls.crt"), "-noout", "-ext", "subjectAltName")
    assert "DNS:responder.security.svc.cluster.local" in text
    assert "kubectl -n security create secret generic falco-responder-tls" in result.stdout
    assert "kubectl -n falco create secret generic falcosidekick-mtls" in result.stdout


def test_gen_certs_rerun_keeps_the_ca_and_renews_the_leaves(tmp_path):
    out = tmp_path / "out"
    run_gen_certs(out)
    ca, leaf = (out / "ca.crt").read_bytes(), (out / "tls.crt").read_bytes()
    run_gen_certs(out, NAMESPACE="other")
    assert (out / "ca.crt").read_bytes() == ca
    assert (out / "tls.crt").read_bytes() != leaf
    openssl_text("verify", "-CAfile", str(out / "ca.crt"), str(out / "tls.crt"))


# --- the certificates in use: mutual TLS and the pod's probes --------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    statuses: dict[str, int] = {"/healthz": 200, "/readyz": 503}

    def do_GET(self):  # noqa: N802 - the name http.server calls
        self.send_response(self.statuses.get(self.path, 404))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def mtls_server(certs):
    """An HTTPS server that, like the responder with a client CA, requires client certs."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "tls.crt", certs / "tls.key")
    context.load_verify_locations(certs / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.handle_error = lambda request, address: None  # refused handshakes are expected
    # Polled every 0.05 s (the default 0.5 s is what each shutdown() would wait).
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def handshake(port: int, certs: Path, client: str | None) -> None:
    context = ssl.create_default_context(cafile=certs / "ca.crt")
    if client:
        context.load_cert_chain(certs / f"{client}.crt", certs / f"{client}.key")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="falco-responder.falco-responder.svc") as tls:
        tls.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert tls.recv(64).startswith(b"HTTP/1.0 200")


def test_falcosidekicks_client_cert_completes_mutual_tls_with_the_service_name(mtls_server,
                                                                              certs):
    handshake(mtls_server, certs, "client")


def test_a_client_without_a_certificate_is_refused(mtls_server, certs):
    with pytest.raises((ssl.SSLError, ConnectionError)):
        handshake(mtls_server, certs, None)


def run_probe(probe: dict, port: int, certs: Path) -> int:
    """The probe's command as the kubelet runs it in the container, against `port`."""
    program, *args = probe["exec"]["command"]
    assert program == "python"
    env = {"PATH": os.environ.get("PATH", ""), "RESPONDER_PORT": str(port),
           "RESPONDER_TLS_CERT_FILE": str(certs / "tls.crt"),
           "RESPONDER_TLS_KEY_FILE": str(certs / "tls.key"),
           "RESPONDER_TLS_CLIENT_CA_FILE": str(certs / "ca.crt")}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, timeout=30,
                          check=False).returncode


def test_liveness_probe_passes_through_mutual_tls_with_the_pods_own_cert(container,
                                                                       mtls_server, certs):
    assert run_probe(container["livenessProbe"], mtls_server, certs) == 0


def test_readiness_probe_fails_when_readyz_answers_503(container, mtls_server, certs):
    assert run_probe(container["readinessProbe"], mtls_server, certs) != 0
