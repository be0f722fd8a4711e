"""The console section of the benchmark still runs end to end (figures not checked)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent


def test_quick_console_section_times_every_page():
    result = subprocess.run([sys.executable, "bench/run.py", "--quick", "--sections",
                             "console"], cwd=ROOT, capture_output=True, text=True,
                            timeout=180, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "== 5. Console pages with 5,000 alerts in the journal" in out
    for page in ("overview (24 h charts)", "timeline, 5th page (cursor)",
                 "filter: outcome failed (1%)", "alert page", "table page",
                 "table check (POST, replays 200 alerts)", "timeline, 5,000 waiting"):
        assert f"| {page} " in out, page
