"""`responder actions` lists every action as its module declares it; docs/actions.md is that
listing as Markdown, and fails here when it drifts from the code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from responder.actions import Action, Kind, Limit, Param, Rbac, Registry, Result, Target
from responder.catalog import describe_actions, format_markdown
from responder.cli import main
from responder.errors import TableError
from responder.permissions import OWN_RBAC, required_grants
from responder.table import parse_table

DOCS = Path(__file__).resolve().parent.parent / "docs" / "actions.md"


def run(capsys, *argv: str) -> str:
    assert main(["actions", *argv]) == 0
    return capsys.readouterr().out


class IsolatePod(Action):
    """Apply a deny-all NetworkPolicy to the pod."""

    name = "isolate-pod"
    needs = ("namespace", "pod")
    acts_on = Kind("NetworkPolicy", "networking.k8s.io/v1", name_from="pod", namespaced=True)
    params = {"policy_name": Param((str,), doc="name of the NetworkPolicy to create")}
    rbac = (Rbac("networkpolicies", ("create", "delete"), "networking.k8s.io",
                 why="create the deny-all policy; delete it to undo"),)
    limits = (Limit("max_isolations_per_minute", 5, doc="isolations per minute"),)
    reversal = "delete the NetworkPolicy"

    def run(self, target: Target, params) -> Result:
        raise NotImplementedError  # never run: only its declarations are listed


def test_text_lists_every_action_with_params_limits_and_rbac_reasons(capsys, registry):
    out = run(capsys)
    for action in registry:
        assert f"{action.name}: " in out
        for key in action.params:
            assert f"    {key} (" in out
        for limit in action.limits:
            assert f"    {limit.key} (default {limit.default}): {limit.doc}" in out
        for rule in action.rbac:
            group = rule.api_group or "core"
            assert f"{rule.resource} ({group}) {', '.join(rule.verbs)}: {rule.why}" in out
    assert all(rule.why in out for rule in OWN_RBAC)


def test_json_holds_every_declaration(capsys, registry):
    listed = json.loads(run(capsys, "--json"))
    assert [a["name"] for a in listed["actions"]] == registry.names()
    for entry in listed["actions"]:
        action = registry.get(entry["name"])
        assert entry["needs"] == list(action.needs)
        assert set(entry["params"]) == set(action.params)
        assert entry["destructive"] is action.destructive
        assert entry["reversal"] == action.reversal
        assert [(r["resource"], r["verbs"], r["why"]) for r in entry["rbac"]] == [
            (r.resource, list(r.verbs), r.why) for r in action.rbac]
        assert all(r["why"] for r in entry["rbac"])  # every permission says why
    granted = {(r["apiGroup"], r["resource"], r["verb"]) for r in listed["cluster_role"]}
    assert ("", "events", "create") in granted


def test_docs_actions_md_is_the_generated_listing(capsys):
    # Regenerate with: responder actions --markdown > docs/actions.md
    assert DOCS.read_text("utf-8") == run(capsys, "--markdown")


def test_a_new_action_module_is_listed_with_its_own_api_group():
    catalog = describe_actions(Registry([IsolatePod]))
    (entry,) = catalog["actions"]
    assert entry["acts_on"] == "NetworkPolicy (networking.k8s.io/v1)"
    assert entry["limits"] == {"max_isolations_per_minute": {"default": 5,
                                                            "doc": "isolations per minute"}}
    assert "| `networking.k8s.io` | networkpolicies | create | isolate-pod |" in \
        format_markdown(catalog)


def test_a_permission_needed_twice_is_granted_once_with_both_reasons(registry):
    grants = {(g.api_group, g.resource, g.verb): g.reasons for g in required_grants(registry)}
    needing_pods = [a.name for a in registry
                    if any(r.resource == "pods" and "get" in r.verbs for r in a.rbac)]
    assert len(needing_pods) > 1
    assert [who for who, _ in grants[("", "pods", "get")]] == needing_pods


def test_a_new_actions_limit_is_a_table_default_validated_at_load():
    registry = Registry([IsolatePod])
    rule = "rules: [{name: r, match: {rules: [x]}, actions: [{action: isolate-pod}]}]\n"
    table = parse_table("defaults: {max_isolations_per_minute: 3}\n" + rule, "t.yaml", registry)
    assert table.limits.value(IsolatePod.limits[0]) == 3
    assert parse_table(rule, "t.yaml", registry).limits.value(IsolatePod.limits[0]) == 5
    with pytest.raises(TableError) as info:
        parse_table("defaults: {max_isolations_per_minute: -1, max_cordoned_nodes: 1}\n" + rule,
                    "t.yaml", registry)
    assert info.value.problems == [
        "defaults: max_cordoned_nodes: unknown key (known: coalesce_seconds, dry_run, "
        "max_isolations_per_minute, protected_namespaces, skip_standalone_pods)",
        "defaults: max_isolations_per_minute: must be a number of at least 0"]
