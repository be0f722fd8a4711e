"""The action table: every `check` error class, and each matching criterion."""

import textwrap

import pytest

from responder.actions import default_registry
from responder.errors import TableError
from responder.events import event_from_dict
from responder.table import load_table, match_rules, parse_table

GOOD = """
defaults: {dry_run: true, protected_namespaces: [kube-system]}
rules:
  - name: kill-reverse-shells
    match:
      rules: ["Netcat Remote Code Execution in Container", "Suspect Renamed Netcat*"]
      priority: ">=Warning"
      tags: [container]
      source: syscall
      output_fields:
        k8s.ns.name: {not: [monitoring]}
    actions:
      - action: label-pod
        params: {labels: {quarantine: "true"}}
      - action: delete-pod
        params: {grace_period_seconds: 0}
      - action: cordon-node
    continue: true
"""


def table(text: str):
    return parse_table(textwrap.dedent(text), "t.yaml", default_registry())


def problems(text: str) -> list[str]:
    with pytest.raises(TableError) as info:
        table(text)
    return info.value.problems


def one_rule(rule_yaml: str) -> str:
    return "rules:\n" + textwrap.indent(textwrap.dedent(rule_yaml), "  ")


def event(rule="Netcat Remote Code Execution in Container", priority="Warning", **extra):
    fields = extra.pop("output_fields", {"k8s.ns.name": "shop", "k8s.pod.name": "web"})
    return event_from_dict({"rule": rule, "priority": priority, "output_fields": fields,
                            "tags": extra.pop("tags", ["container"]), **extra})


def test_issue_example_table_is_valid():
    loaded = table(GOOD)
    assert [r.name for r in loaded.rules] == ["kill-reverse-shells"]
    assert [a.action for a in loaded.rules[0].actions] == ["label-pod", "delete-pod",
                                                           "cordon-node"]


def test_packaged_default_table_is_valid():
    assert load_table(None, default_registry()).rules


@pytest.mark.parametrize(("rule_yaml", "expected"), [
    ("- name: x\n  match: {rules: [a]}\n  actions: [{action: explode}]",
     "rule #1 (x): actions[1].action: unknown action 'explode'"),
    ("- name: x\n  match: {rules: [a]}\n  actions: [{action: delete-pod, params: {force: 1}}]",
     "rule #1 (x): actions[1].params.force: unknown parameter"),
    ("- name: x\n  match: {priority: '>>Warning'}\n  actions: [{action: cordon-node}]",
     "rule #1 (x): match.priority: bad priority expression '>>Warning'"),
    ("- name: x\n  match: {priority: '>=Loud'}\n  actions: [{action: cordon-node}]",
     "rule #1 (x): match.priority: bad priority expression '>=Loud': unknown priority"),
    ("- name: x\n  match: {rules: [a]}\n"
     "  actions: [{action: delete-pod, params: {grace_period_seconds: '0'}}]",
     "rule #1 (x): actions[1].params.grace_period_seconds: must be an integer, got a string"),
    ("- name: x\n  match: {rules: [a]}\n"
     "  actions: [{action: delete-pod, params: {grace_period_seconds: true}}]",
     "rule #1 (x): actions[1].params.grace_period_seconds: must be an integer, got a boolean"),
    ("- name: x\n  match: {rules: a-string-is-fine, tags: [1]}\n  actions: [{action: cordon-node}]",
     "rule #1 (x): match.tags: must be a non-empty list of strings"),
    ("- name: x\n  match: {rules: [a]}\n  actions: [{action: label-pod}]",
     "rule #1 (x): actions[1].params.labels: required parameter is missing"),
    ("- name: x\n  match: {rules: [a]}\n"
     "  actions: [{action: label-pod, params: {labels: {q: true}}}]",
     "rule #1 (x): actions[1].params.labels: value of 'q': must be a string"),
    ("- name: x\n  match: {rules: [a]}\n"
     "  actions: [{action: label-pod, params: {labels: {q: 'has space'}}}]",
     "rule #1 (x): actions[1].params.labels: value of 'q': must be alphanumeric"),
    ("- name: x\n  match: {rules: [a]}\n"
     "  actions: [{action: label-pod, params: {labels: {'-bad': ok}}}]",
     "rule #1 (x): actions[1].params.labels: key '-bad': name must be"),
    ("- name: x\n  match: {rules: [a]}\n"
     "  actions: [{action: label-pod, params: {labels: {q: " + "a" * 64 + "}}}]",
     "value of 'q': must be at most 63 characters"),
    ("- match: {rules: [a]}\n  actions: [{action: cordon-node}]",
     "rule #1: name: required key is missing"),
    ("- name: Not_Kebab\n  match: {rules: [a]}\n  actions: [{action: cordon-node}]",
     "rule #1 (Not_Kebab): name: must match"),
    ("- name: x\n  actions: [{action: cordon-node}]", "rule #1 (x): match: required key"),
    ("- name: x\n  match: {rules: [a]}", "rule #1 (x): actions: required key is missing"),
    ("- name: x\n  match: {rules: [a]}\n  actions: []",
     "rule #1 (x): actions: must be a non-empty"),
    ("- name: x\n  match: {colour: red}\n  actions: [{action: cordon-node}]",
     "rule #1 (x): match.colour: unknown criterion"),
    ("- name: x\n  match: {rules: [a]}\n  actions: [{action: cordon-node}]\n  when: now",
     "rule #1 (x): when: unknown key"),
    ("- name: x\n  match: {rules: [a]}\n  actions: [{action: cordon-node}]\n  continue: maybe",
     "rule #1 (x): continue: must be true or false"),
    ("- name: x\n  match: {rules: [a]}\n  actions: [{action: cordon-node}]\n  dry_run: 'no'",
     "rule #1 (x): dry_run: must be true or false"),
    ("- name: x\n  match: {output_fields: {k8s.ns.name: {is: [a]}}}\n"
     "  actions: [{action: cordon-node}]",
     "rule #1 (x): match.output_fields.k8s.ns.name: a mapping here may only hold 'not'"),
    ("- name: x\n  match: {rules: [a]}\n  actions: [{action: cordon-node}]\n  notify: [email]",
     "rule #1 (x): notify: unknown notifier 'email'"),
    ("- name: x\n  match: {rules: [a]}\n  actions: [cordon-node]",
     "rule #1 (x): actions[1]: must be a mapping with an 'action' key"),
    ("- just-a-string", "rule #1: must be a mapping"),
    ("- name: x\n  match: {rules: [a]}\n"
     "  actions: [{action: isolate-pod, params: {allow_egress_cidrs: [10.0.0.1/8]}}]",
     "rule #1 (x): actions[1].params.allow_egress_cidrs: [0] '10.0.0.1/8': not a CIDR"),
    ("- name: x\n  match: {rules: [a]}\n"
     "  actions: [{action: isolate-pod, params: {allow_egress_cidrs: [nowhere]}}]",
     "rule #1 (x): actions[1].params.allow_egress_cidrs: [0] 'nowhere': not a CIDR"),
    # ip_network takes an int and packed bytes too; a table must write a CIDR as text.
    ("- name: x\n  match: {rules: [a]}\n"
     "  actions: [{action: isolate-pod, params: {allow_egress_cidrs: [167772160]}}]",
     "rule #1 (x): actions[1].params.allow_egress_cidrs: [0] 167772160: not a CIDR"),
    ("- name: x\n  match: {rules: [a]}\n"
     "  actions: [{action: isolate-pod, params: {allow_egress_cidrs: [!!binary CgAAAQ==]}}]",
     "rule #1 (x): actions[1].params.allow_egress_cidrs: [0] b'\\n\\x00\\x00\\x01': not a CIDR"),
    ("- name: x\n  match: {rules: [a]}\n  actions: [{action: isolate-pod, params: "
     "{allow_ingress_from: [{pod_selector: {'-bad': x}}]}}]",
     "rule #1 (x): actions[1].params.allow_ingress_from: [0].pod_selector: key '-bad': name "
     "must be"),
    ("- name: x\n  match: {rules: [a]}\n  actions: [{action: isolate-pod, params: "
     "{allow_ingress_from: [{namespace_selector: {team: 'has space'}}]}}]",
     "rule #1 (x): actions[1].params.allow_ingress_from: [0].namespace_selector: value of "
     "'team': must be alphanumeric"),
    ("- name: x\n  match: {rules: [a]}\n  actions: [{action: isolate-pod, params: "
     "{allow_ingress_from: [{pods: {app: x}}]}}]",
     "rule #1 (x): actions[1].params.allow_ingress_from: [0]: must be a mapping with "
     "namespace_selector and/or pod_selector"),
    ("- name: x\n  match: {rules: [a]}\n"
     "  actions: [{action: isolate-pod, params: {allow_dns: 'yes'}}]",
     "rule #1 (x): actions[1].params.allow_dns: must be a boolean, got a string"),
    ("- name: x\n  match: {rules: [a]}\n"
     "  actions: [{action: isolate-pod, params: {isolate_node: true}}]",
     "rule #1 (x): actions[1].params.isolate_node: unknown parameter (known: allow_dns, "
     "allow_egress_cidrs, allow_ingress_from, detach)"),
])
def test_check_reports_each_error_class_with_rule_and_key(rule_yaml, expected):
    found = problems(one_rule(rule_yaml))
    assert any(expected in p for p in found), found


def test_check_reports_every_error_not_just_the_first():
    found = problems("""
        defaults: {dry_run: perhaps, colour: red}
        rules:
          - name: a
            match: {rules: [x]}
            actions: [{action: nope}]
          - name: a
            match: {priority: '~Warning'}
            actions: [{action: delete-pod, params: {grace_period_seconds: -1}}]
        extra: 1
        """)
    assert found == [
        "table: extra: unknown key (known: defaults, rules)",
        "defaults: colour: unknown key (known: coalesce_seconds, dry_run, max_cordoned_nodes, "
        "max_pod_deletions_per_minute, protected_namespaces, skip_standalone_pods)",
        "defaults: dry_run: must be true or false",
        "rule #1 (a): actions[1].action: unknown action 'nope' "
        "(known: capture-evidence, cordon-node, delete-pod, isolate-pod, label-pod)",
        "rule #2 (a): match.priority: bad priority expression '~Warning': expected a priority "
        "name with an optional >=, <=, >, <, == or !=",
        "rule #2 (a): actions[1].params.grace_period_seconds: must be 0 or more",
        "rule #2 (a): name: duplicate of rule #1",
    ]


def test_an_isolate_pod_param_error_names_the_file_rule_and_key():
    with pytest.raises(TableError) as info:
        table(one_rule("- name: iso\n  match: {rules: [a]}\n  actions: [{action: isolate-pod, "
                       "params: {allow_egress_cidrs: [300.0.0.0/8]}}]"))
    assert str(info.value).splitlines()[1].startswith(
        "  t.yaml: rule #1 (iso): actions[1].params.allow_egress_cidrs: [0] '300.0.0.0/8': "
        "not a CIDR")


def test_error_message_names_the_file_on_every_line():
    with pytest.raises(TableError) as info:
        table("rules: {}")
    assert str(info.value).splitlines() == [
        "t.yaml: 1 problem(s) in the action table", "  t.yaml: table: rules: must be a list"]


@pytest.mark.parametrize(("text", "expected"), [
    ("[1, 2]", "table: must be a mapping"),
    ("defaults: {}", "table: rules: required key is missing"),
    ("rules: [\n", "not valid YAML"),
    ("defaults: {protected_namespaces: kube-system}\nrules: []",
     "defaults: protected_namespaces: must be a list"),
])
def test_whole_file_errors(text, expected):
    assert any(expected in p for p in problems(text))


def test_a_yaml_syntax_error_names_the_file_and_line():
    [problem] = problems("rules:\n  - name: x\n    match: {rules: [a\n")
    assert 'in "t.yaml", line 3, column 20' in problem and "unicode string" not in problem


def test_unreadable_file_is_a_table_error(tmp_path):
    with pytest.raises(TableError, match="cannot read the file"):
        load_table(tmp_path / "missing.yaml", default_registry())


# --- matching ----------------------------------------------------------------------

@pytest.mark.parametrize(("expr", "priority", "expected"), [
    (">=Warning", "Warning", True), (">=Warning", "Critical", True),
    (">=Warning", "Notice", False), (">Warning", "Warning", False),
    ("<Warning", "Notice", True), ("<=Warning", "Error", False),
    ("Warning", "Warning", True), ("Warning", "Error", False),
    ("==warning", "Warning", True), ("!=Debug", "Debug", False),
    (">= info", "Notice", True), ("<Informational", "Debug", True),
])
def test_priority_comparisons_follow_falco_order(expr, priority, expected):
    loaded = table(one_rule(f"- name: x\n  match: {{priority: '{expr}'}}\n"
                            "  actions: [{action: cordon-node}]"))
    assert bool(match_rules(loaded, event(priority=priority))) is expected


@pytest.mark.parametrize(("pattern", "rule", "expected"), [
    ("Suspect Renamed Netcat*", "Suspect Renamed Netcat Remote Code Execution in Container", True),
    ("Suspect Renamed Netcat*", "suspect renamed netcat x", False),
    ("Attach/Exec Pod", "Attach/Exec Pod", True),
    ("Create * Pod", "Create HostNetwork Pod", True),
    ("Create * Pod", "Create Sensitive Mount Pod", True),
    ("Create * Pod", "Create NodePort Service", False),
    ("Drop and execute new binary in container", "Drop and execute new binary", False),
])
def test_rule_names_match_exactly_or_by_glob(pattern, rule, expected):
    loaded = table(one_rule(f"- name: x\n  match: {{rules: ['{pattern}']}}\n"
                            "  actions: [{action: cordon-node}]"))
    assert bool(match_rules(loaded, event(rule=rule))) is expected


def test_tags_must_all_be_present():
    loaded = table(one_rule("- name: x\n  match: {tags: [container, shell]}\n"
                            "  actions: [{action: cordon-node}]"))
    assert match_rules(loaded, event(tags=["shell", "container", "T1059"]))
    assert not match_rules(loaded, event(tags=["container"]))


def test_source_criterion_accepts_sidekick_plural():
    loaded = table(one_rule("- name: x\n  match: {source: syscall}\n"
                            "  actions: [{action: cordon-node}]"))
    assert match_rules(loaded, event(source="syscalls"))
    assert not match_rules(loaded, event(source="k8s_audit"))


@pytest.mark.parametrize(("condition", "fields", "expected"), [
    ("{k8s.ns.name: shop}", {"k8s.ns.name": "shop"}, True),
    ("{k8s.ns.name: shop}", {"k8s.ns.name": "other"}, False),
    ("{k8s.ns.name: shop}", {}, False),
    ("{k8s.ns.name: [a, shop]}", {"k8s.ns.name": "shop"}, True),
    ("{k8s.ns.name: {not: [monitoring]}}", {"k8s.ns.name": "shop"}, True),
    ("{k8s.ns.name: {not: [monitoring]}}", {"k8s.ns.name": "monitoring"}, False),
    ("{k8s.ns.name: {not: [monitoring]}}", {"k8s.ns.name": None}, True),
    ("{fd.rport: 4444}", {"fd.rport": 4444}, True),
    ("{fd.rport: '4444'}", {"fd.rport": 4444}, True),
    ("{'proc.aname[2]': bash}", {"proc.aname[2]": "bash"}, True),
    ("{k8s.pod.name: '<NA>'}", {"k8s.pod.name": "<NA>"}, False),
])
def test_output_field_conditions(condition, fields, expected):
    loaded = table(one_rule(f"- name: x\n  match: {{output_fields: {condition}}}\n"
                            "  actions: [{action: cordon-node}]"))
    assert bool(match_rules(loaded, event(output_fields=fields))) is expected


def test_continue_false_stops_later_rules():
    loaded = table("""
        rules:
          - {name: first, match: {priority: '>=Notice'}, actions: [{action: cordon-node}]}
          - {name: stop, match: {priority: '>=Warning'}, actions: [{action: cordon-node}],
             continue: false}
          - {name: never, match: {priority: '>=Debug'}, actions: [{action: cordon-node}]}
        """)
    assert [r.name for r in match_rules(loaded, event(priority="Warning"))] == ["first", "stop"]
    assert [r.name for r in match_rules(loaded, event(priority="Notice"))] == ["first", "never"]


def test_internal_events_never_match():
    loaded = table(one_rule("- name: x\n  match: {priority: '>=Debug'}\n"
                            "  actions: [{action: cordon-node}]"))
    assert not match_rules(loaded, event(rule="Test rule", priority="Debug", source="internal"))
