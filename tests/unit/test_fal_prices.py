"""fal's synced prices: the file (decimal strings, all or nothing), unit names, and the rule that a
job reserves the higher of the price table and fal's price."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from batch_runner import catalog
from batch_runner.errors import ConfigError
from batch_runner.fal_prices import FalPrice, SyncedPrices, load_synced, our_unit, reserve, write_synced
from batch_runner.pricing import load_price_table

TABLE = load_price_table()
REFRAME = "luma/agent/ray/v3.2/reframe"
AT = datetime(2026, 11, 21, 21, 30, tzinfo=UTC)


def synced(**prices: tuple[str, str]) -> SyncedPrices:
    return SyncedPrices(
        AT, "http://x/v1/models/pricing", {k: FalPrice(k, Decimal(v), u) for k, (v, u) in prices.items()}
    )


def estimate(alias: str, params: dict, duration: str | None = None):
    ep = catalog.endpoint(alias)
    return TABLE.estimate(ep, ep.with_defaults(params), Decimal(duration) if duration else None), TABLE.entry(ep.id)


@pytest.mark.parametrize(
    ("name", "unit"),
    [
        ("second", "second"),
        ("video_second", "second"),
        ("Seconds", "second"),
        ("video", "video"),
        ("gpu_second", None),
        ("image", None),
        ("", None),
        (None, None),
    ],
)
def test_fal_unit_names_map_only_when_known(name, unit):
    assert our_unit(name) == unit


def test_the_file_holds_decimal_strings_and_reads_back(tmp_path: Path):
    path = tmp_path / "data" / "fal-prices.json"
    write_synced(path, synced(**{REFRAME: ("0.0625", "second")}))
    doc = json.loads(path.read_text())
    assert doc["prices"][REFRAME] == {"unit_price": "0.0625", "unit": "second"}
    assert doc["synced_at"] == "2026-11-21T21:30:00Z"
    back = load_synced(path)
    assert back is not None and back.prices[REFRAME].unit_price == Decimal("0.0625")
    assert back.label == "fal-pricing-api@2026-11-21T21:30:00Z"
    assert [p.name for p in path.parent.iterdir()] == ["fal-prices.json"]  # no temporary file left


def test_no_file_is_no_synced_prices(tmp_path: Path):
    assert load_synced(tmp_path / "none.json") is None and load_synced(None) is None


@pytest.mark.parametrize(
    "body",
    [
        '{"format": "other"}',
        "not json",
        (
            '{"format": "batch-runner/fal-prices/1", "synced_at": "2026-11-21T00:00:00Z", '
            '"prices": {"a": {"unit_price": 0.06, "unit": "second"}}}'
        ),
    ],
)
def test_a_bad_file_is_a_config_error_naming_it(tmp_path: Path, body):
    path = tmp_path / "fal-prices.json"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_synced(path)
    assert str(path) in str(err.value) and "prices sync" in str(err.value) and err.value.exit_code == 3


def test_a_higher_synced_price_raises_the_estimate_by_the_tables_ratios():
    table, entry = estimate(
        "ray-3.2/reframe", {"prompt": "p", "video_url": "v", "aspect_ratio": "1:1", "resolution": "720p"}, "5"
    )
    assert table.usd == "0.60"  # $0.12/s at 720p
    higher = reserve(table, entry, synced(**{REFRAME: ("0.07", "second")}))
    assert (higher.usd, higher.unit_price_micro_usd) == ("0.70", 140_000)  # 720p is twice the base
    assert higher.price_table == "fal-pricing-api@2026-11-21T21:30:00Z" and higher.verified == table.verified


def test_a_lower_or_incomparable_synced_price_leaves_the_table_estimate():
    table, entry = estimate("ray-3.2/reframe", {"prompt": "p", "video_url": "v", "aspect_ratio": "1:1"}, "5")
    assert reserve(table, entry, synced(**{REFRAME: ("0.05", "second")})) == table
    assert reserve(table, entry, synced(**{REFRAME: ("9", "gpu_second")})) == table  # unknown unit
    assert reserve(table, entry, synced(**{REFRAME: ("9", "video")})) == table  # not the table's unit
    assert reserve(table, entry, None) == table
