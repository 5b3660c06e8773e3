"""Exact prices: the published examples, the rounding edges and price-file overrides."""

from decimal import Decimal
from pathlib import Path

import pytest

from batch_runner import catalog
from batch_runner.domain import format_usd, usd_to_micro
from batch_runner.errors import ConfigError
from batch_runner.pricing import load_price_table

TABLE = load_price_table()


def price(alias, params, duration=None, table=TABLE):
    ep = catalog.endpoint(alias)
    return table.estimate(ep, ep.with_defaults(params), Decimal(duration) if duration else None)


@pytest.mark.parametrize(
    ("resolution", "five_s", "ten_s"), [("540p", "0.30", "0.60"), ("720p", "0.60", "1.20"), ("1080p", "1.80", "3.60")]
)
def test_ray32_reframe_published_examples(resolution, five_s, ten_s):
    params = {"prompt": "p", "video_url": "v", "aspect_ratio": "9:16", "resolution": resolution}
    assert price("ray-3.2/reframe", params, "5").usd == five_s
    assert price("ray-3.2/reframe", params, "10").usd == ten_s


@pytest.mark.parametrize(("duration", "units"), [("5.000", 5), ("5.04", 6), ("0.5", 1), ("5.000001", 6), ("30.0", 30)])
def test_started_seconds_round_up(duration, units):
    est = price("ray-3.2/reframe", {"prompt": "p", "video_url": "v", "aspect_ratio": "1:1"}, duration)
    assert est.billable_units == units
    assert est.micro_usd == units * 60_000  # $0.06 per started second at 540p
    assert est.unit == "second"


def test_per_second_endpoint_has_one_price_for_every_resolution():
    est = price("ray-2-flash/reframe", {"video_url": "v", "aspect_ratio": "9:16"}, "5.04")
    assert (est.billable_units, est.usd, est.verified) == (6, "0.36", True)


@pytest.mark.parametrize(
    ("alias", "params", "usd"),
    [
        ("ray-2/text-to-video", {"prompt": "p"}, "0.50"),
        ("ray-2/text-to-video", {"prompt": "p", "resolution": "1080p", "duration": "9s"}, "4.00"),
        ("ray-2-flash/text-to-video", {"prompt": "p", "resolution": "720p"}, "0.40"),
        ("ray-3.2/text-to-video", {"prompt": "p", "resolution": "1080p", "duration": "10s"}, "4.00"),
        ("ray-3.2/video-to-video", {"prompt": "p", "video_url": "v"}, "0.72"),
        ("ray-3.2/video-to-video", {"prompt": "p", "video_url": "v", "resolution": "720p", "duration": "10s"}, "2.16"),
        ("ray-3.2/video-to-video", {"prompt": "p", "video_url": "v", "resolution": "720p", "hdr": True}, "2.16"),
        (
            "ray-3.2/video-to-video",
            {"prompt": "p", "video_url": "v", "resolution": "1080p", "hdr": True, "duration": "10s"},
            "8.64",
        ),
        (
            "ray-3.2/video-to-video",
            {"prompt": "p", "video_url": "v", "resolution": "720p", "hdr": True, "exr_export": True},
            "3.24",
        ),
        (
            "ray-3.2/video-to-video",
            {
                "prompt": "p",
                "video_url": "v",
                "resolution": "1080p",
                "hdr": True,
                "exr_export": True,
                "duration": "10s",
            },
            "12.96",
        ),
    ],
)
def test_per_video_prices_follow_the_reference(alias, params, usd):
    est = price(alias, params)
    assert (est.usd, est.billable_units, est.unit) == (usd, 1, "video")


def test_unverified_prices_are_marked():
    assert not price("ray-2/reframe", {"video_url": "v", "aspect_ratio": "1:1"}, "5").verified
    assert not price("ray-2-flash/modify", {"video_url": "v", "image_url": "i"}, "5").verified
    assert not price("ray-3.2/image-to-video", {"prompt": "p", "image_url": "i"}).verified
    hdr = price("ray-3.2/text-to-video", {"prompt": "p", "hdr": True, "resolution": "720p"})
    assert not hdr.verified and hdr.usd == "2.00"
    assert price("ray-3.2/reframe", {"prompt": "p", "video_url": "v", "aspect_ratio": "1:1"}, "5").verified


def test_only_prices_a_fal_page_we_hold_states_are_verified():
    """Audit §9: seed 002 (Ray 2 Flash reframe) and seed 004 (Ray 3.2 reframe) state prices; seed 000
    states only Ray 2's multipliers, and Ray 2 Flash modify is inferred."""
    verified = {e.endpoint for e in TABLE.entries.values() if e.verified}
    assert verified == {"fal-ai/luma-dream-machine/ray-2-flash/reframe", "luma/agent/ray/v3.2/reframe"}
    evidence = {e.endpoint: e.evidence for e in TABLE.entries.values()}
    assert evidence["fal-ai/luma-dream-machine/ray-2"] == "multipliers-only"
    assert evidence["fal-ai/luma-dream-machine/ray-2-flash/modify"] == "inferred"
    assert evidence["luma/agent/ray/v3.2/image-to-video"] == "conflict"
    assert not price("ray-2/text-to-video", {"prompt": "p"}).verified
    v2v = TABLE.entry("luma/agent/ray/v3.2/video-to-video")
    assert not any(m.verified for m in v2v.modifiers)


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ('{unit: second, prices: {"*": "1"}, evidence: hearsay}', "evidence must be one of"),
        ('{unit: second, prices: {"*": "1"}, evidence: inferred, verified: true}', "needs evidence: fal-page"),
    ],
)
def test_evidence_is_checked(tmp_path: Path, entry, needle):
    f = tmp_path / "p.yaml"
    f.write_text(f'name: x\nversion: "1"\nendpoints:\n  ray-2/reframe: {entry}\n')
    with pytest.raises(ConfigError, match=needle):
        load_price_table(f)


def test_estimates_name_the_table():
    assert price("ray-2/text-to-video", {"prompt": "p"}).price_table == "fal-published@2026-11-21"


def test_price_file_overrides_one_endpoint_and_keeps_the_rest(tmp_path: Path):
    f = tmp_path / "acme.yaml"
    f.write_text(
        'name: acme-negotiated\nversion: "7"\nendpoints:\n  ray-3.2/reframe:\n'
        '    unit: second\n    prices: {540p: "0.05", 720p: "0.10", 1080p: "0.30"}\n'
    )
    table = load_price_table(f)
    reframe = price("ray-3.2/reframe", {"prompt": "p", "video_url": "v", "aspect_ratio": "1:1"}, "5", table)
    assert (reframe.usd, reframe.price_table) == ("0.25", "acme-negotiated@7")
    other = price("ray-2/text-to-video", {"prompt": "p"}, table=table)
    assert (other.usd, other.price_table) == ("0.50", "fal-published@2026-11-21")
    assert table.label == "acme-negotiated@7"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (
            'name: x\nversion: "1"\nendpoints:\n  ray-9/reframe: {unit: second, prices: {"*": "1"}}\n',
            "unknown endpoint",
        ),
        ('name: x\nversion: "1"\nendpoints:\n  ray-3.2/reframe: {unit: second, prices: {540p: "1"}}\n', "720p"),
        ('name: x\nversion: "1"\nendpoints:\n  ray-2/reframe: {unit: minute, prices: {"*": "1"}}\n', "unit must be"),
        (
            'name: x\nversion: "1"\nendpoints:\n  ray-2/reframe: {unit: second, prices: {"*": "0.0000001"}}\n',
            "bad price",
        ),
        ('version: "1"\nendpoints: {}\n', "missing 'name'"),
    ],
)
def test_bad_price_files_are_config_errors(tmp_path: Path, body, needle):
    f = tmp_path / "p.yaml"
    f.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_price_table(f)
    assert needle in str(err.value) and str(f) in str(err.value)
    assert err.value.exit_code == 3


def test_money_is_never_float():
    with pytest.raises(TypeError):
        usd_to_micro(0.1)  # type: ignore[arg-type]
    assert usd_to_micro("0.1") == 100_000
    assert usd_to_micro(Decimal("12.34")) == 12_340_000


@pytest.mark.parametrize(
    ("micro", "text"),
    [(360_000, "0.36"), (0, "0.00"), (12_960_000, "12.96"), (1_000_000, "1.00"), (302_400, "0.3024"), (5, "0.000005")],
)
def test_format_usd(micro, text):
    assert format_usd(micro) == text


def test_jobs_with_equal_price_inputs_have_equal_estimates():
    """Planning prices each distinct price_inputs key once: the key holds all an estimate reads."""
    seen: dict[tuple, object] = {}
    durations = [None, Decimal("5"), Decimal("5.04"), Decimal("5E+1"), Decimal("50"), Decimal("50.0")]
    extras = [{}, {"resolution": "720p"}, {"resolution": "1080p", "duration": "10s"}, {"hdr": True}, {"loop": True}]
    for ep in catalog.ENDPOINTS:
        for extra in extras:
            params = ep.with_defaults({"prompt": "p", "aspect_ratio": "1:1", **extra})
            for duration in durations:
                key = TABLE.price_inputs(ep, params, duration)
                assert key is not None
                try:
                    est = TABLE.estimate(ep, params, duration)
                except ValueError:  # bills per second and has no duration
                    continue
                assert seen.setdefault(key, est) == est, (ep.alias, extra, duration)
                assert str(seen[key].billable_units) == str(est.billable_units)  # 5E+1 s is not 50 s as printed


def test_price_inputs_of_an_unhashable_value_is_none():
    ep = catalog.endpoint("ray-3.2/text-to-video")
    params = ep.with_defaults({"prompt": "p", "resolution": ["720p"]})
    assert TABLE.price_inputs(ep, params, None) is None
