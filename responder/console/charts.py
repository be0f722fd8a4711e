"""The overview's charts, as geometry for server-rendered SVG: alerts per hour and action
outcomes per Falco rule over the last 24 hours. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..alerts import HOUR

HOURS = 24
WIDTH, HEIGHT = 240, 40  # the hourly chart's viewBox
OUTCOME_WIDTH = 240
MAX_RULES = 20


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    css: str = ""


@dataclass
class RuleChart:
    rule: str
    total: int = 0
    hours: list[int] = field(default_factory=lambda: [0] * HOURS)
    outcomes: dict[str, int] = field(default_factory=dict)
    bars: list[Bar] = field(default_factory=list)
    outcome_bars: list[Bar] = field(default_factory=list)


def rule_charts(rows: Iterable[tuple[int, str, str, int]], now: float,
                limit: int = MAX_RULES) -> tuple[list[RuleChart], int]:
    """One chart per Falco rule, busiest first (at most `limit`), from `alerts.hourly_counts`
    rows; and how many rules were left out."""
    first = int(now // HOUR) - HOURS + 1
    charts: dict[str, RuleChart] = {}
    for hour, rule, outcome, n in rows:
        chart = charts.setdefault(rule, RuleChart(rule))
        if outcome:
            chart.outcomes[outcome] = chart.outcomes.get(outcome, 0) + n
        elif 0 <= hour - first < HOURS:
            chart.hours[hour - first] += n
            chart.total += n
    ranked = sorted(charts.values(), key=lambda c: (-c.total, c.rule))
    for chart in ranked[:limit]:
        chart.bars = hour_bars(chart.hours, first)
        chart.outcome_bars = outcome_bars(chart.outcomes)
    return ranked[:limit], max(0, len(ranked) - limit)


def alert_total(rows: Iterable[tuple[int, str, str, int]], now: float) -> int:
    """Alerts of every rule over the last 24 hours."""
    first = int(now // HOUR) - HOURS + 1
    return sum(n for hour, _, outcome, n in rows if not outcome and hour >= first)


def hour_bars(counts: list[int], first_hour: int) -> list[Bar]:
    """A bar per hour, scaled to the busiest hour."""
    top = max(counts) or 1
    step = WIDTH / len(counts)
    bars = []
    for i, n in enumerate(counts):
        height = HEIGHT * n / top
        label = f"{_clock(first_hour + i)} UTC: {n} alert(s)"
        bars.append(Bar(round(i * step + 1, 2), round(HEIGHT - height, 2),
                        round(step - 2, 2), round(height, 2), label))
    return bars


def outcome_bars(outcomes: dict[str, int]) -> list[Bar]:
    """One stacked bar: each outcome's share of the rule's actions."""
    total = sum(outcomes.values())
    bars, x = [], 0.0
    for outcome, n in sorted(outcomes.items()):
        width = OUTCOME_WIDTH * n / total
        bars.append(Bar(round(x, 2), 0, round(width, 2), 12, f"{outcome}: {n}",
                        f"o-{outcome}"))
        x += width
    return bars


def _clock(hour: int) -> str:
    return f"{hour % 24:02d}:00"
