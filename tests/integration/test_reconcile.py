"""`reconcile` against the emulator's usage API: it agrees when all is recorded, finds the paid
duplicate behind a dropped submit, reports price drift, and explains an admin-key refusal."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import httpx
from click.testing import CliRunner

from batch_runner.cli import cli
from tests.integration.run_helpers import make_bench


def _env(bench, key="reconcile-key", fal_prices=None):
    env = {
        "BATCH_RUNNER_DB": bench.db_url,
        "BATCH_RUNNER_FAL_URL": bench.emulator.url,
        "FAL_KEY": key,
        "FAL_ADMIN_KEY": None,
    }
    if fal_prices is not None:
        env["BATCH_RUNNER_FAL_PRICES"] = str(fal_prices)
    return env


def _settled(bench) -> None:
    """Wait until every request the emulator accepted has completed (and been billed)."""
    for _ in range(3000):
        rows = [r for r in bench.emulator_log() if r["request_id"]]
        if all(r["state"] in ("COMPLETED", "CANCELLED") for r in rows):
            return
        time.sleep(0.02)
    raise AssertionError("the emulator never settled")


def test_reconcile_agrees_when_everything_is_recorded(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(), clips=1)
    bench.run()
    result = CliRunner().invoke(cli, ["reconcile", "--json"], env=_env(bench))
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and data["clean"] is True
    assert [(m["endpoint"], m["usd"]) for m in data["matched"]] == [("luma/agent/ray/v3.2/reframe", "0.60")]


def test_reconcile_finds_the_paid_duplicate_behind_a_dropped_submit(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(faults="drop_after_submit=1/1"), clips=1)
    bench.run()
    _settled(bench)
    fal_costs = [r["cost_usd"] for r in bench.emulator_log() if r["request_id"]]
    result = CliRunner().invoke(cli, ["reconcile", "--json"], env=_env(bench))
    assert result.exit_code == 10
    [diff] = json.loads(result.stdout)["differences"]
    assert diff["kind"] == "unrecorded spend at fal"
    assert (diff["ours_usd"], diff["fal_usd"], diff["difference_usd"]) == ("0.30", "0.60", "0.30")
    assert sorted(fal_costs) == ["0.3", "0.3"]
    [explained] = diff["explained_by_uncertain_submits"]
    uncertain_job = bench.sql("select id from jobs where state = 'uncertain'")[0][0]
    accepted = {r["request_id"] for r in bench.emulator_log() if r["request_id"]}
    recorded = {rid for (rid,) in bench.sql("select request_id from attempts where request_id is not null")}
    [unrecorded] = accepted - recorded
    assert explained == {
        "job": uncertain_job,
        "attempt": 1,
        "reserved_usd": "0.30",
        "confidence": "confirmed",
        "request_id": unrecorded,
    }  # matched by request id in fal's own records
    table = CliRunner().invoke(cli, ["reconcile"], env=_env(bench))
    assert table.exit_code == 10
    assert f"confirmed: fal billed request {unrecorded} for the uncertain submit of job {uncertain_job}" in table.stdout


def test_reconcile_labels_an_unconfirmed_explanation_possible(tmp_path, media, emulator_factory):
    """Reproduction 5: an uncertain submit that fal's records do not show is a guess, and said so."""
    bench = make_bench(tmp_path, media, emulator_factory(), clips=1)
    bench.run()
    first = bench.sql("select min(id) from jobs")[0][0]
    # job 1 looks like an uncertain submit whose input fal never saw; its real spend is unrecorded
    bench.sql(
        "update attempts set state = 'uncertain', request_id = null, billed_micro_usd = null, "
        "input_sha256 = ? where job_id = ?",
        "f" * 64,
        first,
    )
    bench.sql("update jobs set state = 'uncertain' where id = ?", first)
    result = CliRunner().invoke(cli, ["reconcile", "--json"], env=_env(bench))
    [diff] = json.loads(result.stdout)["differences"]
    [explained] = diff["explained_by_uncertain_submits"]
    assert result.exit_code == 10 and explained["confidence"] == "possible" and explained["request_id"] is None
    table = CliRunner().invoke(cli, ["reconcile"], env=_env(bench))
    assert f"possibly the uncertain submit of job {first}" in table.stdout and "confirmed" not in table.stdout


def test_a_price_table_that_differs_from_fal_is_not_drift(tmp_path, media, emulator_factory):
    """fal's one unit price per endpoint is not the table's 540p, shortest-duration price: only
    fal's own numbers (its pricing API, the last sync, the price it billed) are compared."""
    bench = make_bench(tmp_path, media, emulator_factory(), clips=1)
    bench.run()
    prices = tmp_path / "ours.yaml"
    prices.write_text(
        'name: ours\nversion: "1"\nendpoints:\n  ray-3.2/reframe:\n    unit: second\n'
        '    prices: {540p: "0.05", 720p: "0.10", 1080p: "0.30"}\n'
    )
    result = CliRunner().invoke(cli, ["--prices", str(prices), "reconcile", "--json"], env=_env(bench))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["price_drift"] == []


def _sync_from(emulator, path, key="reconcile-key"):
    """`prices sync` against `emulator`, into `path`."""
    result = CliRunner().invoke(
        cli, ["prices", "sync", "-o", str(path)], env={"BATCH_RUNNER_FAL_URL": emulator.url, "FAL_KEY": key}
    )
    assert result.exit_code == 0, result.output


def test_reconcile_reports_drift_when_fal_changed_its_price_since_the_sync(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(), clips=1)
    bench.run()
    cheaper = tmp_path / "cheaper.yaml"
    cheaper.write_text(
        'name: old\nversion: "1"\nendpoints:\n  ray-3.2/reframe:\n    unit: second\n'
        '    prices: {540p: "0.05", 720p: "0.10", 1080p: "0.30"}\n'
    )
    synced = tmp_path / "fal-prices.json"
    _sync_from(emulator_factory(prices_path=cheaper), synced)  # last week's fal said $0.05
    result = CliRunner().invoke(cli, ["reconcile", "--json"], env=_env(bench, fal_prices=synced))
    assert result.exit_code == 10, result.output
    data = json.loads(result.stdout)
    assert data["differences"] == []  # the money agrees; the price moved
    [drift] = data["price_drift"]
    assert (drift["endpoint"], drift["kind"], drift["fal_unit_price_usd"], drift["compared_with_usd"]) == (
        "luma/agent/ray/v3.2/reframe",
        "fal changed its price since the last sync",
        "0.06",
        "0.05",
    )
    assert drift["compared_with"].startswith("fal-pricing-api@")
    _sync_from(bench.emulator, synced)  # synced again: fal's numbers agree once more
    again = CliRunner().invoke(cli, ["reconcile", "--json"], env=_env(bench, fal_prices=synced))
    assert again.exit_code == 0 and json.loads(again.stdout)["price_drift"] == []


def test_a_unit_we_cannot_map_is_reported_as_unknown_never_as_drift(tmp_path, media, emulator_factory):
    emulator = emulator_factory(price_units={"luma/agent/ray/v3.2/reframe": "gpu_second"})
    bench = make_bench(tmp_path, media, emulator, clips=1)
    bench.run()
    synced = tmp_path / "fal-prices.json"
    _sync_from(emulator, synced)
    result = CliRunner().invoke(cli, ["reconcile", "--json"], env=_env(bench, fal_prices=synced))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["price_drift"] == [] and data["clean"] is True
    assert {(n["endpoint"], n["kind"], n["unit"]) for n in data["notes"]} == {
        ("luma/agent/ray/v3.2/reframe", "unknown unit", "gpu_second")
    }
    table = CliRunner().invoke(cli, ["reconcile"], env=_env(bench, fal_prices=synced))
    assert table.exit_code == 0 and "UNKNOWN UNIT luma/agent/ray/v3.2/reframe" in table.stdout


def test_reconcile_from_mid_day_counts_the_whole_day_on_both_sides(tmp_path, media, emulator_factory):
    """fal's usage API aligns a window to whole days by default (bound_to_timeframe): a daily
    reconcile starting after the day's spend (say at 13:00) must not call that spend unrecorded."""
    bench = make_bench(tmp_path, media, emulator_factory(), clips=1)
    bench.run()
    [(last,)] = bench.sql("select max(finished_at) from attempts")
    last = datetime.fromisoformat(str(last)).replace(tzinfo=UTC)
    since = last + timedelta(seconds=1)
    result = CliRunner().invoke(
        cli,
        ["reconcile", "--json", "--since", since.isoformat(), "--until", (since + timedelta(hours=1)).isoformat()],
        env=_env(bench),
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["since"] == f"{since.date()}T00:00:00+00:00" and data["requested_since"] == since.isoformat()
    if since.date() == last.date():  # the day's spend is counted once on each side, and agrees
        assert [(m["day"], m["usd"]) for m in data["matched"]] == [(str(last.date()), "0.60")]


def test_reconcile_without_an_admin_key_names_fal_admin_key(tmp_path):
    result = CliRunner().invoke(
        cli,
        ["reconcile"],
        env={
            "BATCH_RUNNER_DB": str(tmp_path / "none.db"),
            "FAL_KEY": None,
            "FAL_ADMIN_KEY": None,
            "BATCH_RUNNER_FAL_URL": None,
        },
    )
    assert result.exit_code == 3 and result.stdout == ""
    assert "FAL_ADMIN_KEY" in result.stderr and result.stderr.count("\n") == 1


def test_reconcile_says_when_the_usage_api_needs_an_admin_key(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(admin_keys=frozenset({"admin-key"})), clips=1)
    result = CliRunner().invoke(cli, ["reconcile"], env=_env(bench, key="ordinary-key"))
    assert result.exit_code == 9 and result.stdout == ""
    assert "needs an admin key" in result.stderr and "FAL_ADMIN_KEY" in result.stderr
    assert "ordinary-key" not in result.stderr
    ok = CliRunner().invoke(cli, ["reconcile"], env=_env(bench, key="admin-key"))
    assert ok.exit_code == 0
    both = CliRunner().invoke(cli, ["reconcile"], env={**_env(bench, key="ordinary-key"), "FAL_ADMIN_KEY": "admin-key"})
    assert both.exit_code == 0, both.output  # FAL_ADMIN_KEY is the one reconcile uses
    assert httpx.get(f"{bench.emulator.url}/_emulator/health").status_code == 200
