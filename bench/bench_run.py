"""Benchmark `run`: 1,000 jobs against the emulator in instant mode at concurrency 32, beside a
plain script using the official fal-client (submit, poll, download in a thread pool of 32).

Each contender gets its own fresh emulator process (so neither profits from the other's cached
renders). HTTP requests are counted by the emulator itself. Figures go to BENCHMARKS.md.

Usage: python bench/bench_run.py [--sources 20] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work-run"
sys.path.insert(0, str(ROOT))

from bench._load import ASPECTS, EXE, EmulatorProcess, write_load_batch  # noqa: E402
from bench._report import publish, run_measured  # noqa: E402

GRID_X = list(range(0, 100, 10))
CONCURRENCY = 32


def prepare(sources: int) -> Path:
    shutil.rmtree(WORK, ignore_errors=True)
    return write_load_batch(WORK, sources, GRID_X, output_root="out-runner")


def inprocess_cpu_per_file(path: Path, runs: int = 200) -> float:
    """CPU seconds one in-process check of an output costs (avprobe.probe_video, as output.py calls it)."""
    from batch_runner import avprobe

    before = time.process_time()
    for _ in range(runs):
        avprobe.probe_video(path, f"file:{path}")
    return (time.process_time() - before) / runs


def ffprobe_cpu_per_file(path: Path, runs: int = 30) -> float:
    """CPU seconds (user + system) one ffprobe of an output costs, as the runner calls it."""
    before = os.times()
    for _ in range(runs):
        subprocess.run(
            ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
            capture_output=True,
            check=True,
        )
    after = os.times()
    return ((after.children_user - before.children_user) + (after.children_system - before.children_system)) / runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sources", type=int, default=20)
    ap.add_argument("--no-write", action="store_true")
    opts = ap.parse_args()
    manifest = prepare(opts.sources)
    jobs = opts.sources * len(ASPECTS) * len(GRID_X)
    env = {**os.environ, "FAL_KEY": "bench-key", "BATCH_RUNNER_DB": f"sqlite:///{WORK / 'bench.db'}"}
    env.pop("BATCH_RUNNER_FAL_URL", None)
    subprocess.run([str(EXE), "db", "upgrade"], env=env, check=True, capture_output=True)  # never created by itself

    plan = json.loads(
        subprocess.run(
            [str(EXE), "plan", str(manifest), "--json"], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    (WORK / "jobs.json").write_text(
        json.dumps([{"endpoint": j["endpoint"], "input": j["params"]} for j in plan["jobs"]])
    )

    with EmulatorProcess("--instant", "--concurrency", str(CONCURRENCY)) as emu:
        plain_wall, plain_rss, out, _, plain_cpu = run_measured(
            [
                sys.executable,
                str(ROOT / "bench" / "plain_fal_client.py"),
                emu.url,
                str(WORK / "jobs.json"),
                str(WORK / "out-plain"),
                str(CONCURRENCY),
            ],
            env,
            WORK,
        )
        plain, plain_emu_cpu = emu.health()["http_requests"], emu.cpu_seconds()
        assert json.loads(out)["done"] == jobs and sum(emu.accepted_per_input().values()) == jobs
    with EmulatorProcess("--instant", "--concurrency", str(CONCURRENCY)) as emu:
        ours_wall, ours_rss, out, _, ours_cpu = run_measured(
            [str(EXE), "--fal-url", emu.url, "run", str(manifest), "--concurrency", str(CONCURRENCY), "--json"],
            env,
            WORK,
        )
        ours, ours_emu_cpu = emu.health()["http_requests"], emu.cpu_seconds()
        summary = json.loads(out)
        assert summary["jobs"] == {"succeeded": jobs}, summary
        assert sum(emu.accepted_per_input().values()) == jobs

    an_output = next((WORK / "out-runner" / "bench").glob("*.mp4"))
    probe_cpu_s, check_cpu_s = ffprobe_cpu_per_file(an_output), inprocess_cpu_per_file(an_output)

    def per_job(counts: dict[str, int]) -> float:
        return float(counts.get("api", 0) / jobs)

    rows = [
        (
            "plain fal-client script (baseline)",
            f"{plain_wall:.1f} s",
            f"{jobs / plain_wall:.1f}",
            "1.00",
            f"{per_job(plain):.2f}",
            f"{plain_cpu:.1f} s ({plain_cpu / jobs * 1000:.1f} ms)",
            f"{plain_emu_cpu:.1f} s",
            f"{plain_rss / 1024:.0f} MB",
        ),
        (
            "batch-runner run (persists, verifies)",
            f"{ours_wall:.1f} s",
            f"{jobs / ours_wall:.1f}",
            f"{plain_wall / ours_wall:.2f}",
            f"{per_job(ours):.2f}",
            f"{ours_cpu:.1f} s ({ours_cpu / jobs * 1000:.1f} ms)",
            f"{ours_emu_cpu:.1f} s",
            f"{ours_rss / 1024:.0f} MB",
        ),
    ]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        (
            f"Measured {stamp} on {os.cpu_count()} cores: {jobs:,} jobs ({opts.sources} sources × 50 combinations, "
            f"Ray 2 Flash reframe), emulator in instant mode, concurrency {CONCURRENCY} (`make bench`)."
        ),
        "",
        (
            "| contender | wall | jobs/s | speed vs baseline | HTTP requests per job besides the download "
            "| its CPU (per job) | the emulator's CPU, renders included | peak RSS |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    lines += [
        "",
        (
            f"The output check the runner must make (the plain script makes none) reads the container "
            f"in process through libavformat (PyAV): {check_cpu_s * 1000:.1f} ms of CPU per output, "
            f"measured in this run, against {probe_cpu_s * 1000:.0f} ms for an ffprobe process on the "
            f"same file ({probe_cpu_s * jobs:.0f} s of CPU for {jobs:,} outputs, which the runner no "
            f"longer spends)."
        ),
        "",
        (
            f"Targets: issue 14's 1.5× the plain script ({plain_wall / ours_wall:.2f}× → "
            f"{'met' if ours_wall * 1.5 <= plain_wall else 'NOT met'}); "
            "at most 4 requests per job besides the download "
            f"({per_job(ours):.2f} → {'met' if per_job(ours) <= 4 else 'NOT met'}); peak RSS under 200 MB "
            f"({ours_rss / 1024:.0f} MB → {'met' if ours_rss / 1024 < 200 else 'NOT met'})."
        ),
    ]
    publish("run-bench", "Run", lines, write=not opts.no_write)


if __name__ == "__main__":
    main()
