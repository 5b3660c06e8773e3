"""A duration reads the same whether ffprobe printed it ("35.000000") or the probe cache kept it ("35")."""

from decimal import Decimal

import pytest

from batch_runner.domain import format_seconds
from batch_runner.schema import max_source


@pytest.mark.parametrize(
    ("raw", "shown"),
    [("35.000000", "35"), ("35", "35"), ("35.040000", "35.04"), ("0.500", "0.5"), ("1E+2", "100"), ("5.04", "5.04")],
)
def test_durations_are_normalised(raw: str, shown: str):
    assert format_seconds(Decimal(raw)) == shown


def test_a_too_long_source_reads_the_same_from_ffprobe_and_from_the_cache():
    rule = max_source(Decimal("30.000"))
    from_ffprobe = next(iter(rule({}, Decimal("35.000000"))))
    from_cache = next(iter(rule({}, Decimal("35"))))
    assert from_ffprobe == from_cache
    assert from_ffprobe.msg == "source is 35 s long, at most 30 s allowed"
    assert from_ffprobe.hint == "trim the source to 30 s or less"
