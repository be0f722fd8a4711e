"""The time-to-act benchmark section runs on the real apiserver and judges its figures with
checks that are themselves right (a token bucket's excess, the busiest second)."""

import pytest

from bench.time_to_act import budget_excess, latencies_ms, peak_per_second

from .apiserver import kube_binary
from .benchrun import quick_bench


def test_requests_within_a_token_bucket_show_no_excess():
    # burst 10 at t=0, then one every 0.2 s at 5 per second: exactly the bucket
    times = [0.0] * 10 + [0.2 * i for i in range(1, 26)]
    assert budget_excess(times, qps=5, burst=10) <= 0
    assert budget_excess(times + [6.0], qps=5, burst=10) <= 0  # tokens had come back


def test_requests_beyond_a_token_bucket_show_their_excess():
    times = [0.0] * 12  # two more than the burst, in the same instant
    assert budget_excess(times, qps=5, burst=10) == pytest.approx(2)
    spread = [i * 0.05 for i in range(40)]  # 20 per second for 2 s against 5/s, burst 10
    assert budget_excess(spread, qps=5, burst=10) == pytest.approx(40 - 5 * 1.95 - 10)


def test_peak_per_second_counts_the_busiest_second():
    assert peak_per_second([0.0, 0.5, 0.9, 1.2, 3.0]) == 3
    assert peak_per_second([0.0, 0.5, 0.9, 1.0, 3.0]) == 4
    assert peak_per_second([]) == 0


def test_latencies_pair_each_alert_with_its_action():
    sent = {"p0": 10.0, "p1": 10.25, "p2": 10.5}
    acted = {"p0": 10.012, "p1": 10.27}
    assert latencies_ms(sent, acted) == pytest.approx([12.0, 20.0])


@pytest.mark.slow
def test_quick_time_to_act_section_measures_both_servers_and_the_budget():
    kube_binary("kube-apiserver")  # skips (or fails in CI) without the binaries
    out = quick_bench("--sections", "time-to-act")
    assert "== 4. Time to act" in out and "skipped" not in out
    for line in ("| API alone (inline intake, no client rate limit) | 4/s",
                 "| responder serve, defaults                       | burst of 20",
                 "responder serve, defaults: p50 = API alone + ",
                 "the 20th alert of a burst acted on within", "| containment  |",
                 "| audit Events |", "redis: take_token"):
        assert line in out, f"{line!r} missing from:\n{out}"
