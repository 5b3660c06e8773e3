"""Scale-out: several `batch-runner work` processes on one PostgreSQL database and one fal
(the emulator), as users run them on several machines. Every job ends once, no input reaches fal
twice (the emulator's own request log), the run's budget and the in-flight cap hold across
processes, and when two workers are killed with SIGKILL the others finish everything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import httpx

from bench._load import ASPECTS, write_load_batch
from tests.integration.run_helpers import Bench

EXE = Path(sys.executable).parent / "batch-runner"
WORKERS = 4
SOURCES = 8
GRID_X = list(range(0, 100, 10))  # 8 sources × 5 aspect ratios × 10 positions = 400 jobs
JOBS = SOURCES * len(ASPECTS) * len(GRID_X)
IN_FLIGHT = 16  # the fal account's limit, shared by every worker


def _bench(tmp_path: Path, pg_url: str, emulator) -> Bench:
    manifest = write_load_batch(tmp_path, SOURCES, GRID_X, batch="scale")
    return Bench(tmp_path, emulator, manifest, pg_url)


def _env(bench: Bench, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "BATCH_RUNNER_DB": bench.db_url,
        "BATCH_RUNNER_FAL_URL": bench.emulator.url,
        "FAL_KEY": "scale-test-key",
        **extra,
    }
    env.pop("CI", None)
    return env


def _cli(bench: Bench, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), *args], env=_env(bench), capture_output=True, text=True, timeout=600)


def _plan_and_enqueue(bench: Bench, machines: int = 1) -> int:
    """Upgrade the database, enqueue the manifest from `machines` processes at once (as the
    nightly cron line does on every machine); the planned total in micro-USD."""
    done = _cli(bench, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    procs = [
        subprocess.Popen(
            [str(EXE), "enqueue", str(bench.manifest)],
            env=_env(bench),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(machines)
    ]
    outcomes = [(*p.communicate(timeout=600), p.returncode) for p in procs]
    assert [code for _, _, code in outcomes] == [0] * machines, [err for _, err, _ in outcomes]
    assert bench.sql("select count(*), count(distinct key) from jobs") == [(JOBS, JOBS)]
    plan = json.loads(_cli(bench, "plan", str(bench.manifest), "--json").stdout)
    assert len(plan["jobs"]) == JOBS
    return int(Decimal(plan["total_estimated_cost_usd"]) * 1_000_000)


def _start_workers(bench: Bench, n: int, *extra: str, env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    procs = []
    for _ in range(n):
        log = (bench.root / f"worker{len(list(bench.root.glob('worker*.log')))}.log").open("w")
        procs.append(
            subprocess.Popen(
                [
                    str(EXE),
                    "work",
                    "--batch",
                    "scale",
                    "--until-done",
                    "--concurrency",
                    "4",
                    "--max-in-flight",
                    str(IN_FLIGHT),
                    "--json",
                    *extra,
                ],
                env=env or _env(bench),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return procs


def _wait_all(procs: list[subprocess.Popen], timeout_s: float = 600) -> list[int]:
    deadline = time.monotonic() + timeout_s
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _accepted_per_input(bench: Bench) -> Counter:
    return Counter(r["input_sha256"] for r in bench.emulator_log() if r["request_id"])


def _peak_open(bench: Bench) -> int:
    return httpx.get(f"{bench.emulator.url}/_emulator/health", timeout=30).json()["peak_open_requests"]


def test_four_workers_share_the_batch_its_budget_and_the_in_flight_cap(tmp_path, media, emulator_factory, pg_empty_url):
    bench = _bench(tmp_path, pg_empty_url, emulator_factory(speed=300, concurrency=64, reuse_renders=True))
    total = _plan_and_enqueue(bench, machines=WORKERS)
    added = bench.sql("select details_json from events where kind = 'batch.enqueued'")
    assert sorted(json.loads(d)["added"] for (d,) in added) == [0] * (WORKERS - 1) + [JOBS]
    price = total // JOBS
    assert price * JOBS == total  # every job costs the same: 1 started second at $0.06
    budget = 300 * price + price // 2  # room for 300 jobs and half of another

    # First run: four workers join one run and its budget; dispatch stops before it is exceeded.
    codes = _wait_all(
        _start_workers(bench, WORKERS, "--run", "nightly", "--max-cost", str(Decimal(budget) / 1_000_000))
    )
    assert codes == [5] * WORKERS, [p.read_text()[-2000:] for p in tmp_path.glob("worker*.log")]
    [(reserved, run_budget)] = bench.sql("select reserved_micro_usd, budget_micro_usd from runs")
    billed_at_fal = sum(Decimal(r["cost_usd"] or "0") for r in bench.emulator_log())
    assert run_budget == budget and reserved == 300 * price <= budget
    assert billed_at_fal * 1_000_000 == 300 * price
    assert dict(bench.sql("select state, count(*) from jobs group by state")) == {"succeeded": 300, "queued": 100}

    # Second run: the rest, with no budget. Then every job has ended exactly once.
    codes = _wait_all(_start_workers(bench, WORKERS))
    assert codes == [0] * WORKERS
    assert bench.sql("select state, count(*) from jobs group by state") == [("succeeded", JOBS)]
    assert bench.sql("select count(*), count(distinct job_id) from attempts") == [(JOBS, JOBS)]
    per_input = _accepted_per_input(bench)
    assert len(per_input) == JOBS and set(per_input.values()) == {1}  # no input reached fal twice
    ended = bench.sql("select job_id, count(*) from events where kind = 'job.succeeded' group by job_id")
    assert len(ended) == JOBS and {n for _, n in ended} == {1}
    workers = bench.sql("select count(distinct worker) from attempts")[0][0]
    assert workers == 2 * WORKERS  # every process did its share, in both runs
    assert _peak_open(bench) <= IN_FLIGHT  # the cap held across processes, as fal saw it
    assert sum(Decimal(r["cost_usd"] or "0") for r in bench.emulator_log()) * 1_000_000 == total
    assert len(list((tmp_path / "out" / "scale").glob("*.mp4"))) == JOBS
    assert not list((tmp_path / "out" / "scale").glob(".*.part"))


def test_two_workers_killed_mid_batch_and_the_other_two_finish_everything(
    tmp_path, media, emulator_factory, pg_empty_url
):
    bench = _bench(tmp_path, pg_empty_url, emulator_factory(speed=100, concurrency=64, reuse_renders=True))
    total = _plan_and_enqueue(bench)
    procs = _start_workers(bench, WORKERS, env=_env(bench, BATCH_RUNNER_LEASE_S="6"))
    deadline = time.monotonic() + 300
    while bench.sql("select count(*) from jobs where state = 'succeeded'")[0][0] < JOBS // 4:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.1)
    killed = [p.pid for p in procs[:2]]
    for p in procs[:2]:
        p.send_signal(signal.SIGKILL)
        p.wait()
    held = sum(bench.sql("select count(*) from jobs where lease_owner like ?", f"%:{pid}:%")[0][0] for pid in killed)
    assert held > 0  # the kill landed in the middle of jobs
    codes = _wait_all(procs[2:])
    states = dict(bench.sql("select state, count(*) from jobs group by state"))
    uncertain = states.get("uncertain", 0)  # killed between sending a submit and recording fal's answer
    assert states == {"succeeded": JOBS - uncertain, **({"uncertain": uncertain} if uncertain else {})}
    assert uncertain <= 2 * 4  # at most one per killed thread
    # a survivor exits 1 when its own sweep marked a job uncertain (it names it), else 0
    assert set(codes) <= {0, 1} and (1 in codes) == (uncertain > 0), codes
    per_input = _accepted_per_input(bench)
    assert set(per_input.values()) == {1}  # no input reached fal twice, kill or not
    assert JOBS - uncertain <= len(per_input) <= JOBS  # an uncertain one only if fal got it before the kill
    survivors = [p.pid for p in procs[2:]]
    rescued = bench.sql(
        "select count(distinct c.job_id) from events c join events s on s.job_id = c.job_id "
        f"where c.kind = 'job.claimed' and c.pid in ({killed[0]}, {killed[1]}) "
        f"and s.kind = 'job.succeeded' and s.pid in ({survivors[0]}, {survivors[1]})"
    )[0][0]
    assert rescued > 0  # jobs the dead workers had claimed were finished by the survivors
    assert bench.sql("select count(*) from events where kind = 'worker.dead'")[0][0] >= 1
    billed_at_fal = sum(Decimal(r["cost_usd"] or "0") for r in bench.emulator_log()) * 1_000_000
    assert billed_at_fal <= total and bench.sql("select sum(billed_micro_usd) from attempts")[0][0] <= billed_at_fal
