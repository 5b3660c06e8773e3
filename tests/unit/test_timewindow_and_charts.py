"""--since/--until forms, and the HTML report's chart geometry (every day of a range, round ticks)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from batch_runner.report_html import _day_chart, nice_ticks
from batch_runner.timewindow import parse_when

NOW = datetime(2026, 11, 22, 15, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("today", datetime(2026, 11, 22, tzinfo=UTC)),
        ("yesterday", datetime(2026, 11, 21, tzinfo=UTC)),
        ("24h", datetime(2026, 11, 21, 15, 30, tzinfo=UTC)),
        ("7d", datetime(2026, 11, 15, 15, 30, tzinfo=UTC)),
        ("90m", datetime(2026, 11, 22, 14, 0, tzinfo=UTC)),
        ("2w", datetime(2026, 11, 8, 15, 30, tzinfo=UTC)),
        ("2026-11-20", datetime(2026, 11, 20, tzinfo=UTC)),
        ("2026-11-20T18:00Z", datetime(2026, 11, 20, 18, tzinfo=UTC)),
        ("2026-11-20T19:00+01:00", datetime(2026, 11, 20, 18, tzinfo=UTC)),
    ],
)
def test_parse_when_reads_each_form_as_utc(text, expected):
    got = parse_when(text, NOW)
    assert got == expected and got.tzinfo is not None


def test_parse_when_refuses_other_text_with_the_forms_and_a_bounded_quote():
    with pytest.raises(ValueError, match="is not a time") as err:
        parse_when("x" * 500, NOW)
    assert "24h, 7d" in str(err.value) and "today/yesterday" in str(err.value) and len(str(err.value)) < 200


def test_nice_ticks_are_round_and_reach_the_top():
    assert nice_ticks(0) == [0, 10_000]
    assert nice_ticks(1_100_000) == [0, 500_000, 1_000_000, 1_500_000]
    assert nice_ticks(600_000) == [0, 200_000, 400_000, 600_000]
    assert nice_ticks(123_456_789)[-1] >= 123_456_789 and len(nice_ticks(123_456_789)) <= 6


def test_day_chart_has_a_column_for_every_day_and_labels_that_do_not_overlap():
    days = {f"2026-10-{d:02d}": (d % 3) * 300_000 for d in range(1, 32)}  # a third of the days at $0
    chart = _day_chart(days)
    assert chart is not None and len(chart.bars) == 31
    assert [b.usd for b in chart.bars[:3]] == ["0.30", "0.60", "0.00"] and chart.bars[2].h == 0
    assert chart.bars[1].y == chart.top  # the highest day reaches the top tick ($0.60)
    gaps = [b.at - a.at for a, b in zip(chart.x_ticks, chart.x_ticks[1:], strict=False)]
    assert chart.x_ticks[0].label == "10-01" and min(gaps) >= 44
    assert [t.label for t in chart.y_ticks] == ["$0.00", "$0.20", "$0.40", "$0.60"]
    assert "day (UTC" in chart.x_title and chart.y_title == "USD billed"
