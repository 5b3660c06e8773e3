"""Benchmark scale-out: the same batch done by 1, 2 and 4 `batch-runner work` processes sharing one
PostgreSQL database, against one process on SQLite (the baseline), all measured in this run.

Each contender gets a fresh emulator process (fal's time model sped up, outputs rendered once
per shape so the emulator's ffmpeg does not eat the CPU the workers need) and a fresh database
with the batch already enqueued. Every process runs `work --until-done` with the same number of
threads, and the account's in-flight limit is raised to cover them all, as a team adding machines
would. Wall time runs from starting the workers to the last one exiting. A second table breaks
each row's time above fal's floor down from the emulator's own timestamps (start-up, tail, fal's
latency, refill gaps; issue 14). Figures go to BENCHMARKS.md.

Usage: python bench/bench_scale.py [--sources 8] [--speed 30] [--threads 8] [--no-write]
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work-scale"
sys.path.insert(0, str(ROOT))

from bench._load import ASPECTS, EXE, EmulatorProcess, write_load_batch  # noqa: E402
from bench._report import publish  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
GRID_X = list(range(0, 100, 20))


def prepare(sources: int) -> Path:
    shutil.rmtree(WORK, ignore_errors=True)
    return write_load_batch(WORK, sources, GRID_X)


def fresh_database(backend: str, tag: str) -> tuple[str, Callable[[], None]]:
    """A URL for an empty database, and how to drop it."""
    if backend == "sqlite":
        path = WORK / f"{tag}.db"
        return f"sqlite:///{path}", lambda: None
    import psycopg

    name = f"br_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", drop


def warm_renders(data_dir: Path) -> None:
    """Render every output shape once, untimed, into the emulator data folder every contender's
    emulator then uses: the emulator is not fal, and its ffmpeg renders on the first round (about
    1.2 s of a 2 s round) would otherwise count against the floor share of whichever runs first."""
    warm = write_load_batch(WORK / "warm", 1, [0], output_root="out-warm")  # one job per aspect ratio
    env = {**os.environ, "FAL_KEY": "bench-key", "BATCH_RUNNER_DB": f"sqlite:///{WORK / 'warm' / 'jobs.db'}"}
    subprocess.run([str(EXE), "db", "upgrade"], env=env, check=True, capture_output=True)
    with EmulatorProcess("--instant", "--data-dir", str(data_dir)) as emu:
        subprocess.run([str(EXE), "--fal-url", emu.url, "run", str(warm)], env=env, check=True, capture_output=True)


@dataclass(frozen=True)
class Timeline:
    """One contender's accepted requests as fal (the emulator) timed them, in seconds from starting
    the workers, ordered by when fal received them; and when the last worker exited."""

    received: list[float]
    completed: list[float]
    exited: float

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], start: float, exited: float) -> Timeline:
        """`rows` from the emulator's /_emulator/requests; `start` and `exited` are time.time()."""

        def at(stamp: str) -> float:
            return datetime.fromisoformat(stamp).timestamp() - start

        accepted = [r for r in rows if r["request_id"]]
        assert all(r["completed_at"] for r in accepted), "a request never completed"
        spans = sorted((at(r["received_at"]), at(r["completed_at"])) for r in accepted)
        return cls([r for r, _ in spans], [c for _, c in spans], exited - start)

    def first_submit(self) -> float:
        """From starting the workers to fal receiving the first submit."""
        return self.received[0]

    def tail(self) -> float:
        """From fal's last completion to the last worker exiting."""
        return self.exited - max(self.completed)

    def latencies(self) -> list[float]:
        """fal's own time per request, receipt to completion, in the order fal received them."""
        return [c - r for r, c in zip(self.received, self.completed, strict=True)]

    def floor(self, slots: int) -> float:
        """fal's floor at its measured latencies: list scheduling of the requests, in the order fal
        received them, each on the earliest-free of `slots` with no gap from one's completion to the
        next's submit and each taking its measured latency; the makespan."""
        free = [0.0] * slots
        for latency in self.latencies():
            heapq.heappush(free, heapq.heappop(free) + latency)
        return max(free)

    def refill_gaps(self, slots: int) -> list[float]:
        """For each submit after the first `slots`, the time since the earliest completion not yet
        matched by a submit (the slot it refilled), sorted."""
        done = sorted(self.completed)
        return sorted(self.received[i] - done[i - slots] for i in range(slots, len(self.received)))


@dataclass(frozen=True)
class Result:
    """One row of the table: a contender's wall time, worker CPU, fal's peak, and its timeline."""

    label: str
    processes: int
    wall: float
    cpu: float
    peak: int
    timeline: Timeline


def run_workers(env: dict[str, str], tag: str, processes: int, threads: int) -> tuple[float, float, float, float]:
    """Start `processes` workers and wait for them all: time.time() at their start and at the last
    exit, the wall time between (perf_counter), and their CPU seconds."""
    logs = [(WORK / f"{tag}-{i}.log").open("w") for i in range(processes)]
    command = [str(EXE), "work", "--batch", "bench", "--until-done", "--concurrency", str(threads)]
    command += ["--max-in-flight", str(threads * processes), "--json"]
    started, start = time.time(), time.perf_counter()
    procs = [subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT) for log in logs]
    cpu = 0.0
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{tag}: a worker failed; see {WORK}/{tag}-*.log")
        cpu += usage.ru_utime + usage.ru_stime
    wall, exited = time.perf_counter() - start, time.time()
    for log in logs:
        log.close()
    return started, exited, wall, cpu


def contender(
    manifest: Path, label: str, backend: str, processes: int, threads: int, speed: float, jobs: int, data_dir: Path
) -> Result:
    tag = f"{backend}-{processes}"
    shutil.rmtree(WORK / "out", ignore_errors=True)
    url, drop = fresh_database(backend, tag)
    env = {**os.environ, "FAL_KEY": "bench-key", "BATCH_RUNNER_DB": url}
    env.pop("BATCH_RUNNER_FAL_URL", None)
    try:
        for args in (["db", "upgrade"], ["enqueue", str(manifest)]):
            subprocess.run([str(EXE), *args], env=env, check=True, capture_output=True)
        emulator = ("--speed", str(speed), "--reuse-renders", "--concurrency", "1000", "--data-dir", str(data_dir))
        with EmulatorProcess(*emulator) as emu:
            env["BATCH_RUNNER_FAL_URL"] = emu.url
            started, exited, wall, cpu = run_workers(env, tag, processes, threads)
            rows = emu.requests()
            peak = emu.health()["peak_open_requests"]
        per_input = emu.accepted_per_input(rows)
        assert len(per_input) == jobs and set(per_input.values()) == {1}, f"{tag}: a job was not done exactly once"
        done = len(list((WORK / "out" / "bench").glob("*.mp4")))
        assert done == jobs, f"{tag}: {done} outputs"
    finally:
        drop()
    return Result(label, processes, wall, cpu, peak, Timeline.from_rows(rows, started, exited))


def claim_ms(manifest: Path, backend: str, claims: int = 200, per: int = 8) -> tuple[float, float]:
    """Mean wall time per claimed job (dispatch lock, pick, reserve, attempt, audit event; the
    stale-submit sweep runs at most every quarter lease), in-process with nothing else running:
    one job per transaction, and `per` jobs per transaction (what a pool of `per` free threads
    claims at once)."""
    from batch_runner import planner
    from batch_runner.config import Settings
    from batch_runner.db import engine as db_engine
    from batch_runner.db.queue import JobQueue
    from batch_runner.db.repo import Repository
    from batch_runner.db.transition import Claim
    from batch_runner.domain import Actor
    from batch_runner.pricing import load_price_table

    url, drop = fresh_database(backend, f"claims-{backend}")
    try:
        repo = Repository(db_engine.open_engine(url, auto_migrate=True))
        settings = Settings(db_url=url)
        planner.enqueue(planner.plan(manifest, settings, load_price_table(), repo), repo)
        queue = JobQueue(repo.engine, Actor.current(), 60)
        run = queue.start_run("claims", "bench", None)
        start = time.perf_counter()
        for _ in range(claims // 2):
            assert isinstance(queue.claim(run.id, None, max_in_flight=10**6), Claim)
        single = (time.perf_counter() - start) / (claims // 2) * 1000
        start, taken = time.perf_counter(), 0
        while taken < claims - claims // 2:
            got = queue.claim_many(run.id, None, 10**6, min(per, claims - claims // 2 - taken)).claims
            assert got
            taken += len(got)
        took = (single, (time.perf_counter() - start) / taken * 1000)
        repo.engine.dispose()
        return took
    finally:
        drop()


def model_floor(jobs: int, slots: int, speed: float) -> float:
    """The wall time fal's latency model alone allows: rounds of (queue delay + processing) at this
    many in flight (the emulator's 2 s queue delay and Ray 2 Flash reframe's 60 s, divided by speed)."""
    return math.ceil(jobs / slots) * (2.0 + 60.0) / speed


def row_name(r: Result, results: list[Result]) -> str:
    return "1 process (baseline)" if r is results[0] else f"{r.processes} process{'es' if r.processes > 1 else ''}"


def scale_table(results: list[Result], jobs: int, threads: int, speed: float) -> list[str]:
    lines = [
        (
            "| workers | database | wall | jobs/s | throughput vs baseline | fal's own floor (share of it reached) "
            "| fal's floor at its measured latencies (share reached) "
            "| peak requests in flight at fal | worker CPU per job |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = results[0].wall
    for r in results:
        floor = model_floor(jobs, threads * r.processes, speed)
        measured = r.timeline.floor(threads * r.processes)
        lines.append(
            f"| {row_name(r, results)} | {r.label} | {r.wall:.1f} s | {jobs / r.wall:.1f} | {base / r.wall:.2f} "
            f"| {floor:.1f} s ({floor / r.wall:.0%}) | {measured:.1f} s ({measured / r.wall:.1%}) "
            f"| {r.peak} | {r.cpu / jobs * 1000:.0f} ms |"
        )
    return lines


def breakdown_table(results: list[Result], threads: int, speed: float) -> list[str]:
    """Where each row's time above fal's floor goes, from the emulator's timestamps."""
    lines = [
        (
            f"Where the time above fal's floor goes. *Start-up*: from starting the worker processes to fal "
            f"receiving the first submit. *Tail*: from fal's last completion to the last worker exiting. "
            f"*fal latency*: fal's own time per request, receipt to completion as the emulator measured it "
            f"(mean), and in brackets the model's (2 s queue + 60 s processing) / speed; the "
            f"main table's measured floor schedules these latencies, in the order fal received the requests, "
            f"on the in-flight slots with no gap between one's completion and the next submit. *Refill gap*: "
            f"for each submit after the first {threads} × processes, the time since the earliest completion "
            f"not yet refilled (mean and 90th percentile) — the worker's share of each round."
        ),
        "",
        (
            "| workers | database | start-up to first submit | tail after last completion "
            "| fal latency per request, mean (model) | refill gap mean | refill gap p90 |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r.timeline
        latencies, gaps = t.latencies(), t.refill_gaps(threads * r.processes)
        mean_gap = f"{sum(gaps) / len(gaps) * 1000:.0f} ms" if gaps else "n/a"
        p90_gap = f"{gaps[min(len(gaps) - 1, int(len(gaps) * 0.9))] * 1000:.0f} ms" if gaps else "n/a"
        lines.append(
            f"| {row_name(r, results)} | {r.label} | {t.first_submit():.2f} s | {t.tail():.2f} s "
            f"| {sum(latencies) / len(latencies):.3f} s ({62 / speed:.3f} s) | {mean_gap} | {p90_gap} |"
        )
    return lines


def claims_note(latency: dict[str, tuple[float, float]], threads: int) -> str:
    return (
        f"One claim (dispatch row lock, pick, budget reservation, attempt row, audit event; the stale-submit "
        f"sweep at most every quarter lease), "
        f"alone, in-process: {latency['sqlite'][0]:.1f} ms on SQLite, {latency['postgresql'][0]:.1f} ms on "
        f"PostgreSQL; claimed {threads} to a transaction (what a worker's free threads take at once), "
        f"{latency['sqlite'][1]:.1f} ms and {latency['postgresql'][1]:.1f} ms per job. Claims queue on one row "
        f"lock, so they are bounded at about {1000 / latency['postgresql'][1]:.0f} jobs a second on PostgreSQL "
        f"across all machines. Before the timed rows, one untimed run renders each output shape into the "
        f"emulator data folder that every row's emulator then uses (the emulator's own ffmpeg cost, not fal's)."
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument(
        "--speed", type=float, default=30.0, help="emulator time factor (Ray 2 Flash reframe: 60 s / speed)"
    )
    ap.add_argument("--threads", type=int, default=8, help="worker threads per process")
    ap.add_argument("--no-write", action="store_true")
    opts = ap.parse_args()
    manifest = prepare(opts.sources)
    jobs = opts.sources * len(ASPECTS) * len(GRID_X)
    runs = [
        ("SQLite", "sqlite", 1),
        ("PostgreSQL", "postgresql", 1),
        ("PostgreSQL", "postgresql", 2),
        ("PostgreSQL", "postgresql", 4),
    ]
    data_dir = WORK / "emulator"
    warm_renders(data_dir)
    results = []
    for label, backend, n in runs:
        r = contender(manifest, label, backend, n, opts.threads, opts.speed, jobs, data_dir)
        print(
            f"{label} × {n}: {r.wall:.1f} s, {jobs / r.wall:.1f} jobs/s, worker CPU {r.cpu:.1f} s, "
            f"peak in flight {r.peak}",
            flush=True,
        )
        results.append(r)
    latency = {b: claim_ms(manifest, b, claims=min(200, jobs), per=opts.threads) for b in ("sqlite", "postgresql")}
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        (
            f"Measured {stamp} on {os.cpu_count()} cores: {jobs} jobs (Ray 2 Flash reframe), {opts.threads} threads "
            f"per worker process, emulator at speed {opts.speed:g} ({60.0 / opts.speed:.1f} s of processing per job, "
            f"outputs rendered once per shape), `--max-in-flight` = threads × processes (`make bench`)."
        ),
        "",
        *scale_table(results, jobs, opts.threads, opts.speed),
        "",
        *breakdown_table(results, opts.threads, opts.speed),
        "",
        claims_note(latency, opts.threads),
    ]
    publish("scale-bench", "Scale-out", lines, write=not opts.no_write)


if __name__ == "__main__":
    main()
