"""An approval's timeout is a finite, bounded duration, checked when the table loads: NaN
cannot be stored as a deadline (the worker's closing commit failed, for the whole batch),
and a deadline past the year 9999 cannot be shown (GET /events/<uuid> answered 500)."""

from __future__ import annotations

import pytest

from responder.table import TableError

TABLE = """
rules:
  - name: contain
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    approval: {required: true, timeout: %s}
    actions:
      - action: label-pod
        params: {labels: {suspect: "true"}}
"""


@pytest.mark.parametrize("timeout", [".nan", ".inf", "1e300", "99999999h"])
def test_a_timeout_that_is_not_a_bounded_duration_is_a_table_error(make_table, timeout):
    with pytest.raises(TableError) as caught:
        make_table(TABLE % timeout)
    text = str(caught.value)
    assert "test-table.yaml" in text and "rule #1 (contain)" in text
    assert "approval.timeout" in text and "at most 168h" in text


def test_a_week_is_still_a_timeout(make_table):
    (rule,) = make_table(TABLE % "168h").rules
    assert rule.approval.timeout_seconds == 168 * 3600
