"""RBAC end to end on a real kube-apiserver: manifests/ applied with kubectl, the responder run
with its ServiceAccount's token. Every action succeeds; a verb the ClusterRole lacks is a
`failed` decision naming the 403; `kubectl auth can-i` grants exactly the declared verbs."""

import copy
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from kubernetes import client

from .netcat import FULL_CID, netcat_event
from .test_manifests import MANIFESTS, declared_permissions

pytestmark = pytest.mark.slow

NAMESPACE = "falco-responder"
ACCOUNT = "falco-responder"
USER = f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}"
EVERY_ACTION = """
defaults: {dry_run: false}
rules:
  - name: every-action
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: capture-evidence
      - action: label-pod
        params: {labels: {quarantine: "true"}}
      - action: isolate-pod
        params: {detach: true, allow_dns: true}
      - action: delete-pod
        params: {grace_period_seconds: 0}
      - action: cordon-node
"""
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
#: What the responder must never be able to do, as `kubectl auth can-i` arguments.
FORBIDDEN = (("get", "secrets"), ("list", "secrets"), ("create", "pods", "--subresource=exec"),
             ("escalate", "clusterroles.rbac.authorization.k8s.io"),
             ("bind", "clusterroles.rbac.authorization.k8s.io"), ("*", "*"))


@pytest.fixture(scope="module")
def deployed(apiserver):
    """manifests/ applied as an operator would (`kubectl apply -k`)."""
    apiserver.kubectl("apply", "-k", str(MANIFESTS))
    return apiserver


def token_for(apiserver, account: str) -> str:
    """A bound ServiceAccount token (TokenRequest), as `kubectl create token` mints it."""
    return apiserver.kubectl("create", "token", account, "-n", NAMESPACE,
                             "--duration=1h").strip()


def can_i(apiserver, *args: str, user: str = USER) -> str:
    return apiserver.kubectl("auth", "can-i", *args, f"--as={user}", check=False).strip()


def as_args(resource: str) -> tuple[str, ...]:
    """`kubectl auth can-i` arguments for a resource; a subresource (pods/log) is given with
    --subresource, since kubectl reads `pods/log` as the pod named "log"."""
    resource, _, sub = resource.partition("/")
    return (resource, f"--subresource={sub}") if sub else (resource,)


def listed_grants(text: str) -> dict[str, set[str]]:
    """`kubectl auth can-i --list` rows: resource -> verbs (resource-name rules excluded)."""
    grants: dict[str, set[str]] = {}
    for line in text.splitlines()[1:]:
        columns = line.split(maxsplit=3)
        if len(columns) == 4 and columns[1] == "[]" and columns[2] == "[]":
            grants.setdefault(columns[0], set()).update(columns[3].strip("[]").split())
    return grants


@pytest.fixture
def respond(cluster, apiserver, make_app, make_table):
    """Pod `web` on a node (and a spare node); post one event to an app using `token`."""
    node = cluster.add_node("node-a").metadata.name
    cluster.add_node("node-b")
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))

    def post(token: str) -> list[dict]:
        app = make_app(make_table(EVERY_ACTION), api_client=apiserver.api_client(token=token),
                       intake="inline")
        reply = app.test_client().post("/", data=json.dumps(
            netcat_event(namespace=cluster.namespace)), content_type="application/json")
        assert reply.status_code == 200, reply.get_json()
        return reply.get_json()["decisions"]
    return post


def test_every_registered_action_succeeds_as_the_service_account(cluster, deployed, respond,
                                                                 registry):
    mark = deployed.audit_mark()
    decisions = respond(token_for(deployed, ACCOUNT))
    assert {d["action"] for d in decisions} == set(registry.names())
    assert [(d["action"], d["outcome"]) for d in decisions] == [
        ("capture-evidence", "done"), ("label-pod", "done"), ("isolate-pod", "done"),
        ("delete-pod", "done"), ("cordon-node", "done")]
    seen = deployed.requests_since(mark, user=USER)
    # No kubelet behind the test apiserver: a log read is allowed (not 403), then fails.
    logs = [r for r in seen if r.path.endswith("/log")]
    assert logs and all(r.code != 403 for r in logs), logs
    seen = [r for r in seen if r not in logs]
    assert seen and all(200 <= r.code < 300 for r in seen), seen
    # The audit Events, too, were created with the ServiceAccount's rights.
    # (and capture-evidence listed the pod's own).
    assert sorted(r.verb for r in seen if r.path.endswith("/events")) == ["create"] * 5 + ["list"]
    assert cluster.pod("web") is None


def test_can_i_answers_yes_exactly_for_the_declared_verbs(deployed):
    # kubectl names a resource of an API group as <resource>.<group>, a core one bare.
    declared = {(f"{r}.{g}" if g else r, v) for g, r, v in declared_permissions()}
    grants = listed_grants(deployed.kubectl("auth", "can-i", "--list", f"--as={USER}"))
    for resource in {resource for resource, _ in declared}:
        assert grants.get(resource) == {v for r, v in declared if r == resource}, resource
    assert not {"*", "secrets", "pods/exec"} & set(grants)

    checks = [(verb, resource) for resource, verb in sorted(declared)]
    checks += [(verb, resource) for resource in {r for r, _ in declared} for verb in VERBS
               if (resource, verb) not in declared]
    with ThreadPoolExecutor(4) as pool:
        answers = dict(zip(checks, pool.map(lambda c: can_i(deployed, c[0], *as_args(c[1])),
                                            checks),
                           strict=True))
    assert answers == {c: ("yes" if (c[1], c[0]) in declared else "no") for c in checks}


@pytest.mark.parametrize("forbidden", FORBIDDEN, ids=lambda f: " ".join(f))
def test_can_i_answers_no_for_secrets_exec_escalate_bind_and_wildcards(deployed, forbidden):
    assert can_i(deployed, *forbidden) == "no"


def wait_until_allowed(admin_api, user: str, timeout: float = 10.0) -> None:
    """Until the authorizer (which reads RBAC objects from a cache) knows the new binding."""
    review = {"spec": {"user": user, "resourceAttributes": {"verb": "get", "resource": "pods"}}}
    deadline = time.monotonic() + timeout
    api = client.AuthorizationV1Api(admin_api)
    while not api.create_subject_access_review(review).status.allowed:
        assert time.monotonic() < deadline, f"RBAC binding for {user} never took effect"
        time.sleep(0.05)


@pytest.fixture
def account_without(deployed, admin_api):
    """A ServiceAccount bound to a copy of manifests/rbac.yaml's ClusterRole minus one verb
    on one resource; its token."""
    rbac = client.RbacAuthorizationV1Api(admin_api)
    core = client.CoreV1Api(admin_api)
    made = []

    def make(resource: str, verb: str) -> tuple[str, str]:
        name = f"falco-responder-no-{resource}-{verb}"
        role = copy.deepcopy(next(d for d in yaml.safe_load_all(
            (MANIFESTS / "rbac.yaml").read_text()) if d["kind"] == "ClusterRole"))
        role["metadata"]["name"] = name
        for rule in role["rules"]:
            if resource in rule["resources"]:
                rule["verbs"].remove(verb)
        core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": name}})
        rbac.create_cluster_role(role)
        rbac.create_cluster_role_binding({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]})
        made.append(name)
        wait_until_allowed(admin_api, f"system:serviceaccount:{NAMESPACE}:{name}")
        return name, token_for(deployed, name)

    yield make
    for name in made:
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)
        core.delete_namespaced_service_account(name, NAMESPACE)


def test_a_verb_the_role_lacks_is_a_failed_decision_naming_the_403(cluster, deployed,
                                                                   account_without, respond):
    account, token = account_without("pods", "delete")
    mark = deployed.audit_mark()
    decisions = respond(token)
    user = f"system:serviceaccount:{NAMESPACE}:{account}"
    assert [(d["action"], d["outcome"]) for d in decisions] == [
        ("capture-evidence", "done"), ("label-pod", "done"), ("isolate-pod", "done"),
        ("delete-pod", "failed"), ("cordon-node", "done")]
    assert decisions[3]["reason"] == (
        f'HTTP 403: pods "web" is forbidden: User "{user}" cannot delete resource "pods" '
        f'in API group "" in the namespace "{cluster.namespace}"')
    # A refusal is not retried: one DELETE, answered 403.
    deletes = [r for r in deployed.requests_since(mark, user=user) if r.verb == "delete"]
    assert [r.code for r in deletes] == [403]
    assert cluster.pod("web").metadata.deletion_timestamp is None


def test_a_guardrail_read_the_role_lacks_fails_that_action_only(cluster, deployed,
                                                               account_without, respond):
    account, token = account_without("nodes", "list")
    decisions = respond(token)
    user = f"system:serviceaccount:{NAMESPACE}:{account}"
    assert [(d["action"], d["outcome"]) for d in decisions] == [
        ("capture-evidence", "done"), ("label-pod", "done"), ("isolate-pod", "done"),
        ("delete-pod", "done"), ("cordon-node", "failed")]
    assert decisions[4]["reason"] == (
        f'guardrail check failed: HTTP 403: nodes is forbidden: User "{user}" cannot list '
        f'resource "nodes" in API group "" at the cluster scope')
