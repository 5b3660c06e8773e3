"""reconcile compares whole UTC days: the window it asks fal for and the one it sums our ledger over."""

from datetime import UTC, datetime, timedelta, timezone

from batch_runner.reconcile import whole_days

UTC = UTC


def test_a_mid_day_window_widens_to_the_whole_day():
    start, end = whole_days(datetime(2026, 11, 21, 13, tzinfo=UTC), datetime(2026, 11, 21, 14, tzinfo=UTC))
    assert (start, end) == (datetime(2026, 11, 21, tzinfo=UTC), datetime(2026, 11, 22, tzinfo=UTC))


def test_an_end_at_midnight_stays_exclusive():
    start, end = whole_days(datetime(2026, 11, 20, tzinfo=UTC), datetime(2026, 11, 22, tzinfo=UTC))
    assert (start, end) == (datetime(2026, 11, 20, tzinfo=UTC), datetime(2026, 11, 22, tzinfo=UTC))


def test_other_offsets_are_read_in_utc():
    plus_two = timezone(timedelta(hours=2))
    start, end = whole_days(datetime(2026, 11, 21, 1, tzinfo=plus_two), datetime(2026, 11, 21, 3, tzinfo=plus_two))
    assert (start, end) == (
        datetime(2026, 11, 20, tzinfo=UTC),
        datetime(2026, 11, 21, 1, tzinfo=UTC) + timedelta(hours=23),
    )
