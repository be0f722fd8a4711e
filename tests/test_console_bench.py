"""The console section of the benchmark still runs end to end (figures not checked)."""

import pytest

from .benchrun import quick_bench

pytestmark = pytest.mark.slow



def test_quick_console_section_times_every_page():
    out = quick_bench("--sections", "console", timeout=180)
    assert "== 5. Console pages with 5,000 alerts in the journal" in out
    for page in ("overview (24 h charts)", "timeline, 5th page (cursor)",
                 "filter: outcome failed (1%)", "alert page", "table page",
                 "table check (POST, replays 200 alerts)", "timeline, 5,000 waiting"):
        assert f"| {page} " in out, page
