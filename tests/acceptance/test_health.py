"""`batch-runner health`: exit 0 when everything a run needs is there; exit 11 with a FAIL line
naming the broken part for each thing that is not (no database, a schema behind, no ffprobe on
PATH, fal unreachable, a job held by a worker that died)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from subprocess import DEVNULL
from types import SimpleNamespace

import httpx
from click.testing import CliRunner

from batch_runner import planner
from batch_runner.cli import cli
from batch_runner.db import engine as db_engine
from batch_runner.db.queue import JobQueue
from batch_runner.db.transition import Claim
from batch_runner.domain import Actor
from batch_runner.pricing import load_price_table
from tests.integration.run_helpers import make_bench

UNHEALTHY = 11
EXE = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "batch-runner"


def _health(db: str, fal_url: str, *args: str, lease_s: str = "60") -> tuple[int, dict, str]:
    env = {
        "BATCH_RUNNER_DB": db,
        "BATCH_RUNNER_FAL_URL": fal_url,
        "FAL_KEY": "health-key",
        "BATCH_RUNNER_LEASE_S": lease_s,
    }
    result = CliRunner().invoke(cli, ["health", "--json", *args], env=env)
    return result.exit_code, json.loads(result.stdout), result.stderr


def _status(report: dict) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens there


def test_health_is_ok_on_a_migrated_database_with_ffprobe_and_the_emulator(db_url, emu, tmp_path):
    db_engine.open_engine(db_url, auto_migrate=True).dispose()
    code, report, err = _health(db_url, emu.url)
    assert (code, err) == (0, "")
    assert report["healthy"] is True
    assert _status(report) == {"database": "ok", "leases": "ok", "ffprobe": "ok", "fal": "ok"}


def test_health_lines_name_each_check_without_json(sqlite_url, emu):
    db_engine.open_engine(sqlite_url, auto_migrate=True).dispose()
    env = {"BATCH_RUNNER_DB": sqlite_url, "BATCH_RUNNER_FAL_URL": emu.url}
    result = CliRunner().invoke(cli, ["health"], env=env)
    assert result.exit_code == 0, result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines()] == [
        ["ok", "database"],
        ["ok", "leases"],
        ["ok", "ffprobe"],
        ["ok", "fal"],
    ]


def test_health_fails_without_a_database_and_creates_none(tmp_path, emu):
    path = tmp_path / "nowhere" / "jobs.db"
    code, report, err = _health(f"sqlite:///{path}", emu.url)
    assert code == UNHEALTHY
    assert _status(report) == {"database": "FAIL", "leases": "skip", "ffprobe": "ok", "fal": "ok"}
    assert "db upgrade" in report["checks"][0]["hint"]
    assert err.startswith("Error: 1 of 4 health checks failed: database")
    assert not path.parent.exists()


def test_health_fails_when_the_postgresql_server_does_not_answer(emu):
    code, report, _ = _health(f"postgresql://postgres@127.0.0.1:{_closed_port()}/jobs", emu.url)
    assert code == UNHEALTHY
    assert _status(report) == {"database": "FAIL", "leases": "skip", "ffprobe": "ok", "fal": "ok"}
    assert "cannot open database" in report["checks"][0]["detail"]


def test_health_fails_on_a_schema_behind_head(empty_db_url, emu):
    engine = db_engine.create(empty_db_url)
    db_engine.upgrade(engine, "0005")
    engine.dispose()
    code, report, _ = _health(empty_db_url, emu.url)
    assert code == UNHEALTHY
    database = report["checks"][0]
    assert (database["status"], "schema revision 0005" in database["detail"]) == ("FAIL", True)
    assert "batch-runner db upgrade" in database["hint"]
    assert db_engine.stored_revision(empty_db_url) == "0005"  # health migrated nothing


def test_health_fails_when_ffprobe_is_not_on_path(sqlite_url, emu, tmp_path, monkeypatch):
    db_engine.open_engine(sqlite_url, auto_migrate=True).dispose()
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, report, err = _health(sqlite_url, emu.url)
    assert code == UNHEALTHY
    assert _status(report)["ffprobe"] == "FAIL"
    assert "install ffmpeg" in report["checks"][2]["hint"]
    assert "ffprobe" in err


def test_health_fails_when_fal_does_not_answer(sqlite_url):
    db_engine.open_engine(sqlite_url, auto_migrate=True).dispose()
    code, report, err = _health(sqlite_url, f"http://127.0.0.1:{_closed_port()}")
    assert code == UNHEALTHY
    assert _status(report) == {"database": "ok", "leases": "ok", "ffprobe": "ok", "fal": "FAIL"}
    assert "no connection" in report["checks"][3]["detail"]
    assert "fal" in err


def test_health_fails_on_a_lease_that_ended_long_ago(tmp_path, media, db_url, emu):
    """A worker claims a job with a lease that ended two minutes ago (written through JobQueue,
    as a worker that died and was never swept would leave it)."""
    bench = make_bench(tmp_path, media, SimpleNamespace(url="http://127.0.0.1:9"), clips=1, db_url=db_url)
    planner.enqueue(planner.plan(bench.manifest, bench.settings, load_price_table(), bench.repo), bench.repo)
    dead = JobQueue(bench.repo.engine, Actor("gone-host", 4242, "tester"), -120.0)
    run = dead.start_run("nightly", "b", None)
    assert isinstance(dead.claim(run.id, None, max_in_flight=10), Claim)
    code, report, _ = _health(db_url, emu.url)
    assert code == UNHEALTHY
    leases = report["checks"][1]
    assert leases["status"] == "FAIL"
    assert leases["detail"].startswith("1 job(s) held by a worker") and "gone-host:4242" in leases["detail"]
    # with a lease time longer than two minutes the same lease is not stale yet
    code, report, _ = _health(db_url, emu.url, lease_s="600")
    assert (code, _status(report)["leases"]) == (0, "ok")


def test_health_fails_after_a_work_process_is_killed_holding_a_job(tmp_path, media, emulator_factory):
    """`work` (lease 1 s) is killed with SIGKILL while fal holds its submit; once its lease has
    been over for more than a lease time and no worker ran, health names the stale lease."""
    emu = emulator_factory(speed=200, hold_submit_s=60, hold_submit_count=1)
    bench = make_bench(tmp_path, media, emu, clips=1)
    env = {**os.environ, "BATCH_RUNNER_DB": bench.db_url, "BATCH_RUNNER_FAL_URL": emu.url, "FAL_KEY": "k"}
    env.update(BATCH_RUNNER_LEASE_S="1")
    assert subprocess.run([str(EXE), "enqueue", str(bench.manifest)], env=env, capture_output=True).returncode == 0
    proc = subprocess.Popen([str(EXE), "work", "--concurrency", "1"], env=env, stdout=DEVNULL, stderr=DEVNULL)
    try:
        for _ in range(3000):
            if httpx.get(f"{emu.url}/_emulator/holds", timeout=10).json()["submit"]["held_now"]:
                break
            assert proc.poll() is None, "work ended before it submitted"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    httpx.delete(f"{emu.url}/_emulator/holds", timeout=10)
    time.sleep(2.5)  # the lease (1 s, renewed until the kill) ended, then one more lease time passed
    code, report, _ = _health(bench.db_url, emu.url, lease_s="1")
    assert code == UNHEALTHY
    assert _status(report) == {"database": "ok", "leases": "FAIL", "ffprobe": "ok", "fal": "ok"}
    assert report["checks"][1]["detail"].startswith("1 job(s) held by a worker")
