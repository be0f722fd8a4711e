"""The time-to-contain benchmark section arms the packaged table as an operator would, ends
each measure at the right request of the audit log, and runs on the real apiserver."""

import pytest
import yaml

from bench.run import _armed_table, _packaged_table
from bench.time_to_act import Seen, label_patch, policy_created

from .apiserver import kube_binary
from .benchrun import quick_bench


def seen(verb: str, resource: str, name: str) -> Seen:
    return Seen(verb, resource, name, 1.0, 2.0)


def test_containment_ends_at_the_isolating_policys_create():
    assert policy_created(seen("create", "networkpolicies", "isolate-p0007")) == "p0007"
    assert policy_created(seen("get", "networkpolicies", "isolate-p0007")) is None
    assert policy_created(seen("create", "networkpolicies", "allow-dns")) is None
    assert policy_created(seen("patch", "pods", "p0007")) is None
    assert label_patch(seen("patch", "pods", "p0007")) == "p0007"
    assert label_patch(seen("get", "pods", "p0007")) is None


def test_the_packaged_table_is_armed_and_otherwise_kept():
    shipped, armed = yaml.safe_load(_packaged_table()), yaml.safe_load(_armed_table(True))
    assert shipped["defaults"]["dry_run"] is True
    assert armed["defaults"] == {**shipped["defaults"], "dry_run": False}
    assert armed["rules"] == shipped["rules"]
    without = yaml.safe_load(_armed_table(False))
    (shells,) = [r for r in without["rules"] if r["name"] == "contain-reverse-shells"]
    assert [a["action"] for a in shells["actions"]] == [
        "isolate-pod", "isolate-pod", "label-pod"]
    assert "capture-evidence" not in _armed_table(False)


@pytest.mark.slow
def test_quick_time_to_contain_section_measures_every_table_and_says_what_capture_costs():
    kube_binary("kube-apiserver")  # skips (or fails in CI) without the binaries
    out = quick_bench("--sections", "time-to-contain")
    assert "== 6. Time to contain" in out and "skipped" not in out
    for line in ("| label only (label-pod)                     | 4/s              | 8 ",
                 "| packaged, capture-evidence left out        | burst of 20 (x1) | 20 ",
                 "| packaged default (capture, isolate, label) | 4/s              | 8 ",
                 "| packaged default, logs from a kubelet      | burst of 20 (x1) | 20 ",
                 "what capture-evidence costs containment",
                 "p99 at 4/s = label only + ",
                 "log reads fail fast (recorded in errors.json, e.g. logs/c0.log: HTTP 500"):
        assert line in out, f"{line!r} missing from:\n{out}"
