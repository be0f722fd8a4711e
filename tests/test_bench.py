"""The benchmark script still runs end to end (its figures are not checked: machines differ)."""

import pytest

from .benchrun import quick_bench

# Seconds to a minute each: the benchmark script end to end.
pytestmark = pytest.mark.slow

SECTIONS = ["== 1. Intake throughput and latency", "== 2. Storm", "-- Slack web-api mode --",
            "-- Slack webhook mode --", "== 3. Memory", "== 4. Time to act",
            "== 6. Time to contain", "== 7. A genuine event while", "done in"]


def test_quick_benchmark_runs_every_section():
    # time-to-contain alone takes about 70 s: four servers, each over its own pods.
    out = quick_bench()
    for section in SECTIONS:
        assert section in out, f"{section!r} missing from:\n{out}"
    assert "1 worker x 2 threads (the responder's defaults)" in out


def test_threads_option_runs_section_1_with_that_thread_count():
    out = quick_bench("--sections", "throughput", "--threads", "1", timeout=120)
    assert "1 worker x 1 threads (--threads)" in out
    assert "== 2. Storm" not in out
