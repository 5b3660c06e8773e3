"""`report` on a known batch run with injected faults: every figure equals a sum computed here
independently (the emulator's own costs, ffprobe on the delivered files, the plan's estimates)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner

from batch_runner import planner
from batch_runner.cli import cli
from batch_runner.media import make_clip
from batch_runner.pricing import load_price_table
from tests.integration.run_helpers import make_bench


def _duration(path: Path) -> Decimal:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=duration",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return Decimal(out.strip())


def test_report_figures_equal_independent_sums(tmp_path, media, emulator_factory):
    # One fault a night, each on its own emulator, so each lands where intended:
    # a failed run (a paid retry), a dropped submit (uncertain: money at risk), expired results (waste).
    bench = make_bench(tmp_path, media, emulator_factory(faults="fail=1/1"), clips=1)
    cost_at_fal: dict[str, Decimal] = {}
    for night, faults in enumerate(("fail=1/1", "drop_after_submit=1/1", "expire=1")):
        if night:
            make_clip(
                tmp_path / "media" / f"new{night}.mp4",
                duration="5",
                size="64x36",
                rate=50,
                pattern=("smptebars", "rgbtestsrc")[night - 1],
                audio=False,
            )
            bench.emulator = emulator_factory(faults=faults)
        bench.run()
        cost_at_fal.update(
            {r["request_id"]: Decimal(r["cost_usd"] or "0") for r in bench.emulator_log() if r["request_id"]}
        )
    planned = planner.plan(bench.manifest, bench.settings, load_price_table(), bench.repo)
    estimated = sum(Decimal(j["estimated_cost_usd"]) for j in planned.to_json()["jobs"])
    attempts = bench.sql(
        "select a.request_id, a.number, a.state, j.estimate_micro_usd from attempts a join jobs j on j.id = a.job_id"
    )
    ours = [(rid, n, state, Decimal(est) / 1_000_000) for rid, n, state, est in attempts]
    billed = sum(cost_at_fal[rid] for rid, _, state, _ in ours if rid and state != "uncertain")
    retry_spend = sum(cost_at_fal[rid] for rid, n, state, _ in ours if rid and n > 1 and state != "uncertain")
    waste = sum(cost_at_fal[rid] for rid, _, state, _ in ours if rid and state == "failed")
    at_risk = sum(est for _, _, state, est in ours if state == "uncertain")
    delivered = sum(_duration(p) for p in (tmp_path / "out" / "b").glob("*.mp4") if ".rejected" not in p.name)
    assert retry_spend > 0 and waste > 0 and at_risk > 0  # the faults did what they should

    env = {"BATCH_RUNNER_DB": bench.db_url}
    result = CliRunner().invoke(cli, ["report", "--format", "json"], env=env, catch_exceptions=False)
    total = json.loads(result.stdout)["total"]
    assert Decimal(total["estimated_usd"]) == estimated
    assert Decimal(total["billed_usd"]) == billed
    assert Decimal(total["retry_spend_usd"]) == retry_spend
    assert Decimal(total["waste_usd"]) == waste
    assert Decimal(total["at_risk_usd"]) == at_risk
    assert abs(Decimal(total["delivered_seconds"]) - delivered) < Decimal("0.001")
    per = Decimal(total["cost_per_delivered_second_usd"])
    assert abs(per - billed / delivered) < Decimal("0.0001")
    assert total["outcomes"] == {"failed": 2, "succeeded": 3, "uncertain": 1} and total["jobs"] == 6

    by_ratio = CliRunner().invoke(cli, ["report", "--group-by", "resolution", "--format", "csv"], env=env)
    rows = list(csv.DictReader(io.StringIO(by_ratio.stdout)))
    assert [r["resolution"] for r in rows] == ["540p", "TOTAL"]
    assert Decimal(rows[0]["billed_usd"]) == billed and rows[1]["jobs"] == "6"

    for group in ("endpoint", "tag", "day", "batch"):
        data = json.loads(CliRunner().invoke(cli, ["report", "--group-by", group, "--format", "json"], env=env).stdout)
        assert sum(Decimal(g["billed_usd"]) for g in data["groups"].values()) == billed, group

    table = CliRunner().invoke(cli, ["report"], env=env).stdout
    assert table.splitlines()[-1].startswith("TOTAL") or "TOTAL" in table
    out = tmp_path / "reports" / "nightly.csv"
    written = CliRunner().invoke(cli, ["report", "--format", "csv", "-o", str(out)], env=env)
    assert (
        written.exit_code == 0
        and out.read_text() == CliRunner().invoke(cli, ["report", "--format", "csv"], env=env).stdout
    )
    assert [p.name for p in out.parent.iterdir()] == ["nightly.csv"]  # no temporary file left beside it
    blocked = out / "under-a-file.csv"  # its folder is a file: cannot be written
    refused = CliRunner().invoke(cli, ["report", "--format", "csv", "-o", str(blocked)], env=env)
    assert refused.exit_code == 3 and refused.stdout == "" and "Traceback" not in refused.stderr
    [line] = refused.stderr.splitlines()
    assert line.startswith("Error: cannot write ") and "check the folder and free space" in line
    assert [p.name for p in out.parent.iterdir()] == ["nightly.csv"]


def test_report_time_window_and_bad_dates(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(), clips=1)
    bench.run()
    env = {"BATCH_RUNNER_DB": bench.db_url}
    future = CliRunner().invoke(cli, ["report", "--since", "2099-01-01", "--format", "json"], env=env)
    assert json.loads(future.stdout)["total"]["jobs"] == 0
    past = CliRunner().invoke(cli, ["report", "--until", "2000-01-01T00:00Z", "--format", "json"], env=env)
    assert json.loads(past.stdout)["total"]["billed_usd"] == "0.00"
    now = CliRunner().invoke(cli, ["report", "--since", "2000-01-01", "--format", "json"], env=env)
    assert json.loads(now.stdout)["total"]["billed_usd"] == "0.60"
    for forms in (["--since", "yesterday"], ["--since", "24h"], ["--since", "7d", "--until", "today"]):
        got = CliRunner().invoke(cli, ["report", *forms, "--format", "json"], env=env)
        assert got.exit_code == 0, got.stderr
    day = json.loads(CliRunner().invoke(cli, ["report", "--since", "90m", "--format", "json"], env=env).stdout)
    assert day["total"]["billed_usd"] == "0.60"
    bad = CliRunner().invoke(cli, ["report", "--since", "last tuesday" * 20], env=env)
    assert bad.exit_code == 2 and "90m, 24h, 7d" in bad.stderr and bad.stdout == ""
    assert "last tuesday" * 4 not in bad.stderr  # the bad value is quoted cut short
    nope = CliRunner().invoke(cli, ["report", "--batch", "nope", "--batch", "b"], env=env)
    assert nope.exit_code == 3 and nope.stdout == ""
    assert nope.stderr.startswith("Error: no batch named 'nope'") and "batch-runner status" in nope.stderr
