"""Big-batch paths on both databases, on a batch of a few hundred jobs: the plan's table and JSON
are the same text however they are laid out (rich or line by line, whole or streamed), enqueue
writes one `job.enqueued` event per job it adds (set-based, in chunks), and status, report and
plan --diff agree with the plan. Migration 0007 adds the claim and lease indexes."""

from __future__ import annotations

import csv
import io
import json
import shutil
from decimal import Decimal

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, text

from batch_runner import plaintable
from batch_runner.cli import cli
from batch_runner.db import engine as db_engine

SOURCES = 7  # × 5 aspect ratios × 10 grid positions: 350 jobs, over plaintable.PLAIN_ROWS
JOBS = SOURCES * 50
MANIFEST = """batch: big
endpoint: ray-2-flash/reframe
defaults:
  prompt: extend the background
matrix:
  aspect_ratio: ["9:16", "1:1", "4:3", "3:4", "16:9"]
  grid_position_x: [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
sources:
  - glob: "media/*.mp4"
output_root: out
output: "{batch}/{stem}_{aspect_ratio}_{grid_position_x}.mp4"
"""


@pytest.fixture
def big(tmp_path, media, db_url):
    (tmp_path / "media").mkdir()
    for i in range(SOURCES):
        shutil.copy(media["c5"], tmp_path / "media" / f"s{i}.mp4")
    (tmp_path / "big.yaml").write_text(MANIFEST)
    env = {"BATCH_RUNNER_DB": db_url}
    _cli(env, "db", "upgrade")  # an explicit SQLite file is never created by itself
    return tmp_path / "big.yaml", env


def _cli(env, *args):
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def _whole(text_: str) -> str:
    """What emit_json prints for the same data (json.dumps of it whole)."""
    return json.dumps(json.loads(text_), indent=2, ensure_ascii=False) + "\n"


def test_a_big_plan_reads_the_same_however_it_is_laid_out(big, monkeypatch):
    manifest, env = big
    streamed = _cli(env, "plan", str(manifest), "--json")
    assert streamed == _whole(streamed)
    assert len(json.loads(streamed)["jobs"]) == JOBS
    plain = _cli(env, "plan", str(manifest))
    assert len(plain.splitlines()) > JOBS
    _cli(env, "enqueue", str(manifest))
    plain_diff = _cli(env, "plan", str(manifest), "--diff")
    diff_json = _cli(env, "plan", str(manifest), "--diff", "--json")
    assert diff_json == _whole(diff_json)
    assert len(json.loads(diff_json)["diff"]["unchanged"]) == JOBS
    monkeypatch.setattr(plaintable, "PLAIN_ROWS", 10**9)  # every table through rich again
    assert _cli(env, "plan", str(manifest)) == plain
    assert _cli(env, "plan", str(manifest), "--diff") == plain_diff
    assert f"unchanged  {JOBS} job(s): {JOBS} queued" in plain_diff


def test_enqueue_status_and_report_agree_with_the_plan(big, db_url):
    manifest, env = big
    planned = json.loads(_cli(env, "plan", str(manifest), "--json"))
    assert json.loads(_cli(env, "enqueue", str(manifest), "--json"))["added"] == JOBS
    assert json.loads(_cli(env, "enqueue", str(manifest), "--json"))["added"] == 0
    engine = create_engine(db_url)
    with engine.connect() as conn:
        events = conn.execute(
            text(
                "select e.job_id, e.batch_id, e.to_state, e.from_state, e.details_json, e.pid, j.batch_id, e.at "
                "from events e join jobs j on j.id = e.job_id where e.kind = 'job.enqueued' order by e.id"
            )
        ).all()
        job_ids = conn.execute(text("select id from jobs order by id")).scalars().all()
        batch_enqueued = conn.execute(text("select count(*) from events where kind = 'batch.enqueued'")).scalar()
    engine.dispose()
    assert [e[0] for e in events] == job_ids and len(job_ids) == JOBS  # one each, in job order
    assert {(e[1] == e[6], e[2], e[3], e[4]) for e in events} == {(True, "queued", None, "{}")}
    assert len({e[5] for e in events}) == 1 and len({e[7] for e in events}) == 1 and batch_enqueued == 2

    estimated = sum(Decimal(j["estimated_cost_usd"]) for j in planned["jobs"])
    (status,) = json.loads(_cli(env, "status", "--json"))["batches"]
    assert (status["jobs"], status["states"], Decimal(status["estimated_cost_usd"])) == (
        JOBS,
        {"queued": JOBS},
        estimated,
    )
    report = json.loads(_cli(env, "report", "--batch", "big", "--format", "json"))
    assert (report["total"]["jobs"], Decimal(report["total"]["estimated_usd"])) == (JOBS, estimated)
    rows = list(csv.DictReader(io.StringIO(_cli(env, "report", "--batch", "big", "--items"))))
    assert [r["row_type"] for r in rows] == ["item"] * JOBS + ["total"]
    assert sum(Decimal(r["job_estimate_usd"]) for r in rows[:-1]) == estimated
    assert Decimal(rows[-1]["job_estimate_usd"]) == estimated
    items_json = json.loads(_cli(env, "report", "--batch", "big", "--items", "--format", "json"))
    assert items_json["totals"]["lines"] == JOBS and len(items_json["items"]) == JOBS


def test_migration_0007_adds_the_claim_and_lease_indexes(empty_db_url):
    engine = db_engine.open_engine(empty_db_url, auto_migrate=True)
    found = inspect(engine)
    jobs = {ix["name"]: ix["column_names"] for ix in found.get_indexes("jobs")}
    outputs = {ix["name"]: ix["column_names"] for ix in found.get_indexes("outputs")}
    assert jobs["ix_jobs_state_id"] == ["state", "id"]
    assert jobs["ix_jobs_batch_id_state_id"] == ["batch_id", "state", "id"]
    assert jobs["ix_jobs_lease_owner"] == ["lease_owner"]
    assert "ix_jobs_state" not in jobs and "ix_jobs_batch_id_state" not in jobs  # the narrower ones they replace
    assert outputs["ix_outputs_attempt_id"] == ["attempt_id"]
    engine.dispose()
