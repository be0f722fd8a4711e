"""The benchmark script still runs end to end (its figures are not checked: machines differ)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
SECTIONS = ["== 1. Intake throughput and latency", "== 2. Storm", "-- Slack web-api mode --",
            "-- Slack webhook mode --", "== 3. Memory", "done in"]


def test_quick_benchmark_runs_every_section():
    result = subprocess.run([sys.executable, "bench/run.py", "--quick"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for section in SECTIONS:
        assert section in result.stdout, f"{section!r} missing from:\n{result.stdout}"
