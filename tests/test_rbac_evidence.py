"""capture-evidence as the ServiceAccount of manifests/: every read it declares is granted
(the bundle has the pod, owners, Events and node; log reads pass RBAC and fail only for want
of a kubelet), and a read the role lacks is recorded in the bundle, not fatal."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from . import test_rbac

pytestmark = pytest.mark.slow

# The fixtures of test_rbac.py: manifests/ applied, tokens of accounts missing one verb,
# and the every-action table (capture-evidence first) posted with a token.
deployed = test_rbac.deployed
account_without = test_rbac.account_without
respond = test_rbac.respond


def bundle(decision: dict) -> Path:
    return Path(urlsplit(decision["details"]["location"]).path)


def test_every_part_is_read_with_the_service_accounts_rights(cluster, deployed, respond):
    mark = deployed.audit_mark()
    capture = respond(test_rbac.token_for(deployed, test_rbac.ACCOUNT))[0]
    assert capture["action"] == "capture-evidence" and capture["outcome"] == "done"
    directory = bundle(capture)
    errors = json.loads((directory / "errors.json").read_bytes())
    # Only the logs are missing, and not for RBAC: the apiserver found no kubelet to ask.
    assert sorted(errors) == ["logs/c0.log"]
    assert "403" not in errors["logs/c0.log"]
    assert json.loads((directory / "pod.json").read_bytes())["metadata"]["name"] == "web"
    (owner,) = json.loads((directory / "owners.json").read_bytes())
    assert owner["kind"] == "ReplicaSet" and owner["object"]["metadata"]["name"] == "web-owner"
    assert json.loads((directory / "node.json").read_bytes())["conditions"]
    assert isinstance(json.loads((directory / "events.json").read_bytes()), list)
    made = {(r.verb, r.path) for r in deployed.requests_since(mark, user=test_rbac.USER)}
    ns, pods = cluster.namespace, f"/api/v1/namespaces/{cluster.namespace}/pods"
    assert {("get", f"{pods}/web"), ("get", f"{pods}/web/log"),
            ("get", f"/apis/apps/v1/namespaces/{ns}/replicasets/web-owner"),
            ("get", f"/api/v1/nodes/{ns}-node-a"), ("list", f"/api/v1/namespaces/{ns}/events")
            } <= made


def test_a_read_the_role_lacks_is_recorded_in_the_bundle_and_the_capture_goes_on(
        cluster, deployed, account_without, respond):
    account, token = account_without("events", "list")
    capture = respond(token)[0]
    assert capture["outcome"] == "done"
    assert capture["reason"] == "partial bundle: events.json, logs/c0.log unreadable " \
        "(errors.json)"
    errors = json.loads((bundle(capture) / "errors.json").read_bytes())
    user = f"system:serviceaccount:{test_rbac.NAMESPACE}:{account}"
    assert errors["events.json"] == (
        f'HTTP 403: events is forbidden: User "{user}" cannot list resource "events" in API '
        f'group "" in the namespace "{cluster.namespace}"')
