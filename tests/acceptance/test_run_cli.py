"""`batch-runner run` as users run it: subprocesses killed mid-batch, Ctrl-C, the summary, and
the job-management commands, all against a real emulator over HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.exc import DBAPIError

from batch_runner import catalog
from batch_runner.cli import cli
from tests.integration.run_helpers import make_bench

EXE = Path(sys.executable).parent / "batch-runner"
POLLS = 3000


def _env(bench, **extra) -> dict[str, str]:
    env = {
        **os.environ,
        "BATCH_RUNNER_DB": bench.db_url,
        "BATCH_RUNNER_FAL_URL": bench.emulator.url,
        "FAL_KEY": "cli-test-key",
        **extra,
    }
    env.pop("CI", None)
    return env


def _wait_until(predicate, what: str) -> None:
    for _ in range(POLLS):
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


def _submitted(bench) -> int:
    try:
        return bench.sql("select count(*) from attempts where request_id is not null")[0][0]
    except DBAPIError:  # the run has not created its tables yet
        return 0


def _interrupted_after_submits(bench, args: list[str], env: dict[str, str], submits: int) -> int:
    """Start `batch-runner ARGS`, press Ctrl-C once `submits` requests are recorded, and return
    its exit code (the process is killed if it outlives the test)."""
    proc = subprocess.Popen([str(EXE), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until(lambda: _submitted(bench) >= submits, f"{submits} submit(s) recorded")
        proc.send_signal(signal.SIGINT)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_kill_9_mid_batch_then_restart_submits_every_job_once(tmp_path, media, emulator_factory):
    # Slow enough that the kill lands while requests are in flight at the emulator.
    bench = make_bench(tmp_path, media, emulator_factory(speed=15, concurrency=4), clips=4)
    env = _env(bench, BATCH_RUNNER_LEASE_S="5")
    proc = subprocess.Popen(
        [str(EXE), "run", str(bench.manifest), "--concurrency", "4"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_until(lambda: _submitted(bench) >= 3, "three submits recorded")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = bench.sql("select count(*) from jobs where state = 'succeeded'")[0][0]
    assert done_before < 8
    again = subprocess.run(
        [str(EXE), "run", "--batch", "b", "--concurrency", "4", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = json.loads(again.stdout)
    uncertain = bench.sql("select count(*) from jobs where state = 'uncertain'")[0][0]
    assert bench.sql("select count(*) from jobs where state = 'succeeded'")[0][0] == 8 - uncertain
    assert again.returncode == (1 if uncertain else 0), again.stderr
    log = [r for r in bench.emulator_log() if r["request_id"]]
    per_input: dict[str, int] = {}
    for r in log:
        per_input[r["input_sha256"]] = per_input.get(r["input_sha256"], 0) + 1
    assert len(per_input) == 8 and all(n == 1 for n in per_input.values()), per_input
    followed = bench.sql("select count(*) from events where kind = 'job.followed'")[0][0]
    assert followed >= 1 and summary["jobs"].get("succeeded", 0) >= 1


def test_ctrl_c_leaves_resumable_state_and_exits_130(tmp_path, media, emulator_factory):
    # about 3 s a job: Ctrl-C comes within a poll of the second submit, long before the 6 jobs are done
    bench = make_bench(tmp_path, media, emulator_factory(speed=20, concurrency=4), clips=3)
    env = _env(bench)
    proc = subprocess.Popen(
        [str(EXE), "run", str(bench.manifest), "--concurrency", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_until(lambda: _submitted(bench) >= 2, "two submits recorded")
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "in-flight requests stay recorded" in err
    rows = bench.sql("select state, lease_owner from jobs")
    assert all(owner is None for _, owner in rows)  # nothing left leased to the dead process
    live = bench.sql(
        "select count(*) from jobs j join attempts a on a.job_id = j.id "
        "where j.state in ('submitted', 'in_progress') and a.request_id is not null"
    )[0][0]
    queued = bench.sql("select count(*) from jobs where state = 'queued'")[0][0]
    assert live + queued + bench.sql("select count(*) from jobs where state = 'succeeded'")[0][0] == 6
    again = subprocess.run(
        [str(EXE), "run", "--batch", "b", "--json"], env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr
    assert bench.sql("select count(*) from jobs where state = 'succeeded'")[0][0] == 6
    log = [r for r in bench.emulator_log() if r["request_id"]]
    assert len(log) == 6 and len({r["input_sha256"] for r in log}) == 6


def _invoke(args, env):
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_run_summary_json_and_the_management_commands(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(faults="refuse=1/1"), clips=1)
    env = _env(bench)
    code, out, err = _invoke(["run", str(bench.manifest), "--json"], env)
    summary = json.loads(out)
    assert code == 1 and summary["exit_code"] == 1
    assert summary["jobs"] == {"succeeded": 1, "failed": 1} and summary["billed_cost_usd"] == "0.30"
    [failed] = summary["failed"]
    assert "content_policy_violation" in failed["error"]
    assert err.strip().splitlines()[-1].startswith("Error: 1 job(s) did not succeed")

    code, out, _ = _invoke(["status", "--state", "failed", "--json"], env)
    [row] = json.loads(out)["jobs"]
    assert row["id"] == failed["job"]

    code, out, _ = _invoke(["show", str(failed["job"])], env)
    assert code == 0 and "#1 failed" in out and "job.claimed" in out and "queued → submitting" in out

    code, out, _ = _invoke(["retry", "--batch", "b"], env)
    lines = out.strip().splitlines()
    assert code == 0 and "failed new attempt: may pay $0.30" in lines[0]
    assert lines[-1] == "1 job(s) queued again; run `batch-runner run` to process them; at most $0.30 more"
    code, out, _ = _invoke(["run", "--batch", "b", "--json"], env)
    assert code == 0 and json.loads(out)["jobs"] == {"succeeded": 1}
    code, out, _ = _invoke(["show", str(failed["job"]), "--json"], env)
    attempts = json.loads(out)["attempts"]
    assert [(a["number"], a["state"]) for a in attempts] == [(1, "failed"), (2, "succeeded")]


def test_run_refuses_without_a_key_or_an_emulator(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(), clips=1)
    env = {k: v for k, v in _env(bench).items() if k not in ("FAL_KEY", "BATCH_RUNNER_FAL_URL")}
    proc = subprocess.run([str(EXE), "run", str(bench.manifest)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and proc.stdout == ""
    assert "FAL_KEY is not set" in proc.stderr and "--emulator" in proc.stderr


def test_run_with_the_embedded_emulator_says_so_loudly(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(), clips=1)
    env = {k: v for k, v in _env(bench).items() if k not in ("FAL_KEY", "BATCH_RUNNER_FAL_URL")}
    proc = subprocess.run(
        [str(EXE), "run", str(bench.manifest), "--emulator", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "EMULATOR: every fal call goes to a local emulator" in proc.stderr
    assert json.loads(proc.stdout)["jobs"] == {"succeeded": 2}
    assert "cli-test-key" not in proc.stderr + proc.stdout


def test_budget_stop_exit_code_and_message(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(), clips=2)
    code, out, err = _invoke(["run", str(bench.manifest), "--max-cost", "0.65", "--json"], _env(bench))
    summary = json.loads(out)
    assert code == 5 and summary["stopped_by"] == "budget" and summary["not_run"] == 2
    assert "budget stop (run budget): $0.05 of $0.65 left, not enough for the next job" in err


def test_cancel_queued_locally_and_in_flight_through_the_api(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(speed=2, concurrency=1), clips=2)
    env = _env(bench)
    assert _invoke(["enqueue", str(bench.manifest)], env)[0] == 0
    _interrupted_after_submits(bench, ["run", "--batch", "b", "--concurrency", "1"], env, 1)
    code, out, _ = _invoke(["cancel", "--batch", "b"], env)
    running = "fal was asked to stop them but may still finish" in out  # it had started at fal
    assert code == 0 and out.splitlines()[0] == (
        f"cancelled 3 queued job(s) and {0 if running else 1} request(s) still queued at fal"
    )
    if running:  # it may still finish and bill: the next run follows it to its end
        assert bench.sql("select count(*) from jobs where state = 'cancelled'")[0][0] == 3
        assert _invoke(["run", "--batch", "b"], env)[0] == 0
    states = dict(bench.sql("select state, count(*) from jobs group by state"))
    assert states == {"cancelled": 4}
    cancelled = [r for r in bench.emulator_log() if r["request_id"]]
    assert [r["state"] for r in cancelled] == ["CANCELLED"] and cancelled[0]["cost_usd"] is None
    assert _invoke(["cancel"], env)[0] == 2


@pytest.mark.parametrize("alias", [e.alias for e in catalog.ENDPOINTS])
def test_every_endpoint_runs_to_a_verified_output(tmp_path, media, emulator_factory, alias):
    ep = catalog.endpoint(alias)
    bench = make_bench(tmp_path, media, emulator_factory(), clips=1)
    image = tmp_path / "media" / "still.png"
    image.write_bytes(media["image"].read_bytes())
    lines = [f"batch: e\nendpoint: {alias}\ndefaults:"]
    for f in ep.fields:
        if f.name == "prompt":
            lines.append("  prompt: a test")
        elif f.required and f.type == "enum":
            lines.append(f"  {f.name}: '{f.enum[0]}'")
        elif f.required and f.media == "image" and f.name != ep.source_field:
            lines.append(f"  {f.name}: media/still.png")
    if ep.source_kind == "video":
        lines.append("sources: [media/clip0.mp4]")
    elif ep.source_kind == "image":
        lines.append("sources: [media/still.png]")
    else:
        lines.append("sources:\n  - params: {prompt: a harbour at dawn}")
    manifest = tmp_path / "e.yaml"
    manifest.write_text("\n".join(lines) + "\n")
    code, out, err = _invoke(["run", str(manifest), "--json"], _env(bench))
    assert code == 0, err
    assert json.loads(out)["jobs"] == {"succeeded": 1}
    [(path, width, height)] = bench.sql("select path, width, height from outputs")
    assert Path(path).exists() and min(width, height) in (540, 720)


def test_work_picks_up_jobs_as_they_arrive_until_stopped(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(), clips=1)
    env = _env(bench)
    proc = subprocess.Popen(
        [str(EXE), "-v", "work", "--concurrency", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stderr.readline()  # the worker is up, with nothing to do yet
        stamp, _, first = first.partition(" ")  # not a terminal: each line starts with its UTC time
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp), stamp
        assert first.startswith("run all-") and ": 0 job(s) to do" in first
        assert _invoke(["enqueue", str(bench.manifest)], env)[0] == 0
        _wait_until(
            lambda: bench.sql("select count(*) from jobs where state = 'succeeded'")[0][0] == 2,
            "the worker finished the new jobs",
        )
        assert proc.poll() is None  # still waiting for more
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "submitted as" in err  # -v shows each request id


def test_cancel_on_exit_cancels_in_flight_requests_at_fal(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(speed=2, concurrency=4), clips=1)
    code = _interrupted_after_submits(
        bench, ["run", str(bench.manifest), "--concurrency", "2", "--cancel-on-exit"], _env(bench), 2
    )
    assert code == 130
    # Requests still queued at fal end cancelled at once; running ones were asked to stop and are
    # followed to their end by the next run, which records them cancelled and unbilled.
    open_jobs = bench.sql("select count(*) from jobs where state != 'cancelled'")[0][0]
    assert open_jobs == bench.sql("select count(*) from events where kind = 'job.cancel_requested'")[0][0]
    again = subprocess.run(
        [str(EXE), "run", "--batch", "b", "--json"], env=_env(bench), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and json.loads(again.stdout)["billed_cost_usd"] == "0.00"
    assert bench.sql("select state, count(*) from jobs group by state") == [("cancelled", 2)]
    log = [r for r in bench.emulator_log() if r["request_id"]]
    assert [r["state"] for r in log] == ["CANCELLED", "CANCELLED"] and all(r["cost_usd"] is None for r in log)


def test_a_second_ctrl_c_exits_at_once(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(speed=1, concurrency=2), clips=1)
    proc = subprocess.Popen(
        [str(EXE), "run", str(bench.manifest)],
        env=_env(bench),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_until(lambda: _submitted(bench) >= 1, "a submit recorded")
        proc.send_signal(signal.SIGINT)
        for _ in range(10):  # read until the first Ctrl-C has been handled, and no further
            if proc.stderr.readline().startswith("stopping"):
                break
        else:
            raise AssertionError("the first Ctrl-C was not acknowledged")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)  # far less than the 45 s the request still needs at fal
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    live = bench.sql(
        "select count(*) from attempts where request_id is not null and state in ('submitted', 'in_progress')"
    )[0][0]
    assert live >= 1  # recorded, and the next run follows it


def test_fal_key_never_appears_in_run_output_logs_or_database(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(faults="refuse=1/1"), clips=1)
    env = _env(bench)  # FAL_KEY=cli-test-key
    proc = subprocess.run(
        [str(EXE), "-vv", "run", str(bench.manifest), "--json"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1 and "submitted as" in proc.stderr  # it ran, verbosely, with a failure
    assert "cli-test-key" not in proc.stdout + proc.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"cli-test-key" not in path.read_bytes(), path
