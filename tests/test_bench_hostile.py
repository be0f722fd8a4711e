"""The bench's hostile-clients section: it runs every flood and says what it measured."""

import pytest

from .benchrun import quick_bench

pytestmark = pytest.mark.slow


def test_quick_hostile_section_posts_genuine_events_during_every_flood():
    out = quick_bench("--sections", "hostile", timeout=120)
    assert "== 7. A genuine event while 100 hostile connections stall" in out
    rows = [line for line in out.splitlines() if line.startswith("| ")][1:]
    assert [row.split("|")[1].strip() for row in rows] == [
        "none", "stalled TLS ClientHellos", "stalled in 32 KB of headers",
        "1 MB of a body each, stalled"]
    for row in rows:
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        assert cells[2] == "3/3", row  # every genuine event answered 202
        assert cells[6] in ("met", "MISSED"), row
