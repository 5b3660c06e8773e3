"""`batch-runner prices sync` and what plans and budgets do with it: the real CLI, a SQLite file,
and the emulator's pricing API over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from batch_runner import catalog
from batch_runner.cli import cli
from tests.integration.run_helpers import make_bench

HIGHER = (
    'name: fal-raised\nversion: "1"\nendpoints:\n  ray-3.2/reframe:\n    unit: second\n'
    '    prices: {540p: "0.08", 720p: "0.16", 1080p: "0.48"}\n'
)


def _env(bench, fal_prices: Path, **extra) -> dict:
    return {
        "BATCH_RUNNER_DB": bench.db_url,
        "BATCH_RUNNER_FAL_URL": bench.emulator.url,
        "FAL_KEY": "sync-key",
        "BATCH_RUNNER_FAL_PRICES": str(fal_prices),
        **extra,
    }


def _invoke(*args: str, env: dict):
    return CliRunner().invoke(cli, list(args), env=env)


def test_sync_writes_every_catalog_price_as_decimal_strings(tmp_path, emu):
    path = tmp_path / "prices" / "fal-prices.json"
    result = _invoke("prices", "sync", "-o", str(path), env={"BATCH_RUNNER_FAL_URL": emu.url, "FAL_KEY": "k"})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {len(catalog.ENDPOINTS)} fal price(s) to {path} (fal-pricing-api@")
    doc = json.loads(path.read_text())
    assert set(doc["prices"]) == {e.id for e in catalog.ENDPOINTS}
    assert doc["prices"]["luma/agent/ray/v3.2/reframe"] == {"unit_price": "0.06", "unit": "second"}
    assert all(isinstance(p["unit_price"], str) for p in doc["prices"].values())
    assert doc["synced_at"].endswith("Z") and doc["source"] == f"{emu.url}/v1/models/pricing"
    assert sorted(p.name for p in path.parent.iterdir()) == ["fal-prices.json"]


def test_sync_writes_beside_the_default_database_by_default(tmp_path, emu, monkeypatch):
    monkeypatch.delenv("BATCH_RUNNER_FAL_PRICES")
    result = _invoke(
        "prices",
        "sync",
        "--json",
        env={"BATCH_RUNNER_FAL_URL": emu.url, "FAL_KEY": "k", "XDG_DATA_HOME": str(tmp_path / "data")},
    )
    assert result.exit_code == 0, result.output
    path = tmp_path / "data" / "batch-runner" / "fal-prices.json"
    assert json.loads(result.stdout)["path"] == str(path) and path.is_file()


def test_sync_against_a_pricing_api_error_exits_with_one_line_and_writes_nothing(tmp_path, emulator_factory):
    server = emulator_factory(keys=frozenset({"good-key"}))
    path = tmp_path / "fal-prices.json"
    result = _invoke("prices", "sync", "-o", str(path), env={"BATCH_RUNNER_FAL_URL": server.url, "FAL_KEY": "bad-key"})
    assert result.exit_code == 9 and result.stdout == "" and not path.exists()
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(
        "Error: fal's pricing API failed, nothing was written: pricing: HTTP 401"
    )
    assert "bad-key" not in result.stderr and "FAL_KEY" in result.stderr
    path.write_text("the last sync\n")  # an earlier sync is kept as it was
    assert (
        _invoke(
            "prices", "sync", "-o", str(path), env={"BATCH_RUNNER_FAL_URL": server.url, "FAL_KEY": "bad-key"}
        ).exit_code
        == 9
    )
    assert path.read_text() == "the last sync\n" and [p.name for p in tmp_path.iterdir()] == ["fal-prices.json"]


def test_plan_marks_jobs_priced_from_unverified_entries(tmp_path):
    (tmp_path / "prompts.jsonl").write_text('{"name": "a", "prompt": "a harbour at dawn"}\n')
    manifest = tmp_path / "t2v.yaml"
    manifest.write_text(
        "batch: t2v\nendpoint: ray-2/text-to-video\nsources:\n  - rows: prompts.jsonl\n"
        'output_root: out\noutput: "{batch}/{stem}.mp4"\n'
    )
    env = {"BATCH_RUNNER_DB": str(tmp_path / "jobs.db")}
    assert _invoke("db", "upgrade", env=env).exit_code == 0
    table = _invoke("plan", str(manifest), env=env)
    assert table.exit_code == 0, table.output
    [row] = [line for line in table.stdout.splitlines() if "out/t2v/a.mp4" in line or "t2v/a.mp4" in line]
    assert "0.50*" in row  # Ray 2's base price is on no fal page we hold (seed 000 states only multipliers)
    assert "* unverified price" in table.stdout
    [job] = json.loads(_invoke("plan", str(manifest), "--json", env=env).stdout)["jobs"]
    assert (job["price_verified"], job["estimated_cost_usd"]) == (False, "0.50")


def test_a_synced_higher_price_raises_the_plan_and_the_reservation(tmp_path, media, emulator_factory):
    higher = tmp_path / "higher.yaml"
    higher.write_text(HIGHER)
    bench = make_bench(tmp_path, media, emulator_factory(prices_path=higher), clips=1)  # 2 jobs, 5 s, 540p
    synced = tmp_path / "fal-prices.json"
    before = json.loads(_invoke("plan", str(bench.manifest), "--json", env=_env(bench, synced)).stdout)
    assert before["total_estimated_cost_usd"] == "0.60" and before["fal_prices"] is None
    assert _invoke("prices", "sync", env=_env(bench, synced)).exit_code == 0
    after = json.loads(_invoke("plan", str(bench.manifest), "--json", env=_env(bench, synced)).stdout)
    assert after["total_estimated_cost_usd"] == "0.80"  # fal's $0.08/s, not the table's $0.06/s
    assert after["fal_prices"].startswith("fal-pricing-api@")
    assert {j["priced_by"] for j in after["jobs"]} == {after["fal_prices"]}
    assert all(j["price_verified"] for j in after["jobs"])  # the table's evidence stays with the job
    table = _invoke("plan", str(bench.manifest), env=_env(bench, synced))
    assert f"fal prices {after['fal_prices']} (the higher is reserved)" in table.stdout
    # $0.70 would cover both jobs at the table's price; at fal's it covers one
    run = _invoke("run", str(bench.manifest), "--max-cost", "0.70", "--json", env=_env(bench, synced))
    assert run.exit_code == 5, run.output
    assert json.loads(run.stdout)["not_run"] == 1
    assert bench.sql("select estimate_micro_usd from jobs") == [(400_000,), (400_000,)]
    assert bench.sql("select reserved_micro_usd from attempts") == [(400_000,)]


def test_without_billable_units_a_delivery_is_priced_at_the_synced_price_when_it_is_higher(
    tmp_path, media, emulator_factory
):
    """The provisional bill (no x-fal-billable-units) must not fall below what the plan reserved:
    a budget that counted $0.40 per job must not see $0.30 come back and admit more work."""
    higher = tmp_path / "higher.yaml"
    higher.write_text(HIGHER)
    emu = emulator_factory(prices_path=higher, send_billable_units=False)
    bench = make_bench(tmp_path, media, emu, clips=1)
    synced = tmp_path / "fal-prices.json"
    assert _invoke("prices", "sync", env=_env(bench, synced)).exit_code == 0
    run = _invoke("run", str(bench.manifest), "--json", env=_env(bench, synced))
    assert run.exit_code == 0, run.output
    rows = bench.sql("select billed_micro_usd, price_source from attempts")
    assert len(rows) == 2 and all(b == 400_000 for b, _ in rows)  # fal's $0.08/s, not the table's $0.06/s
    assert all(s.startswith("provisional: fal-pricing-api@") and s.endswith("on the verified output") for _, s in rows)
