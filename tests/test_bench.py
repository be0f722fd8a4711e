"""The benchmark script still runs end to end (its figures are not checked: machines differ)."""

import subprocess
import sys
from pathlib import Path

import pytest

# Seconds to a minute each: the benchmark script end to end.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
SECTIONS = ["== 1. Intake throughput and latency", "== 2. Storm", "-- Slack web-api mode --",
            "-- Slack webhook mode --", "== 3. Memory", "== 4. Time to act",
            "== 6. Time to contain", "done in"]


def test_quick_benchmark_runs_every_section():
    # time-to-contain alone takes about 70 s: four servers, each over its own pods.
    result = subprocess.run([sys.executable, "bench/run.py", "--quick"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for section in SECTIONS:
        assert section in result.stdout, f"{section!r} missing from:\n{result.stdout}"
    assert "1 worker x 2 threads (the responder's defaults)" in result.stdout


def test_threads_option_runs_section_1_with_that_thread_count():
    result = subprocess.run([sys.executable, "bench/run.py", "--quick", "--sections",
                             "throughput", "--threads", "1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 worker x 1 threads (--threads)" in result.stdout
    assert "== 2. Storm" not in result.stdout
