"""A burst run (`run`, `work --until-done`) whose batch ends in another process ends with it: one
idle thread keeps looking every `watch_s`, so the run does not sleep out its idle backoff.

Another worker process holds the batch's last jobs inside the emulator's download hold while this
run starts and finds nothing it may claim; its backoff here is 60 s. The hold is released, the other
process delivers and exits, and this run must end well within the backoff it would have slept."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import httpx

from tests.integration.run_helpers import make_bench

EXE = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "batch-runner"
BACKOFF_S = 60.0  # every idle thread's first wait: the run would end this late without its watcher
POLLS = 3000


def _held_downloads(url: str) -> int:
    return int(httpx.get(f"{url}/_emulator/holds", timeout=10).json()["download"]["held_now"])


def test_a_burst_run_ends_when_another_process_delivers_the_last_jobs(tmp_path, media, emulator_factory):
    emu = emulator_factory(speed=200, hold_download_s=120)
    bench = make_bench(tmp_path, media, emu, clips=1)  # two jobs (two aspect ratios)
    env = {**os.environ, "BATCH_RUNNER_DB": bench.db_url, "BATCH_RUNNER_FAL_URL": emu.url, "FAL_KEY": "other-key"}
    env.pop("CI", None)
    other = subprocess.Popen(
        [str(EXE), "run", str(bench.manifest), "--concurrency", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(POLLS):  # both outputs are downloading in the other process, under its leases
            if _held_downloads(emu.url) == 2:
                break
            assert other.poll() is None, "the other worker ended before its downloads"
            time.sleep(0.02)
        else:
            raise AssertionError("the other worker never reached both downloads")
        ended: dict[str, object] = {}
        this = threading.Thread(
            target=lambda: ended.update(summary=bench.run(manifest=False, idle_s=BACKOFF_S, watch_s=0.05)),
            daemon=True,
        )
        this.start()
        for _ in range(POLLS):  # this run has looked, found nothing it may claim, and waits
            if any(e[0] == "start" for e in bench.events) and this.is_alive():
                break
            time.sleep(0.02)
        time.sleep(0.3)  # a few of the watcher's looks while the other process still holds both jobs
        assert this.is_alive() and "summary" not in ended
        httpx.delete(f"{emu.url}/_emulator/holds", timeout=10)
        assert other.wait(timeout=60) == 0
        this.join(timeout=BACKOFF_S / 2)
        assert not this.is_alive(), "the run slept out its idle backoff after the batch ended elsewhere"
    finally:
        if other.poll() is None:
            other.kill()
    summary = ended["summary"]
    assert summary.counts == {} and summary.billed_micro_usd == 0  # it touched no job
    assert summary.batch_states == {"succeeded": 2}
    assert dict(bench.sql("select state, count(*) from jobs group by state")) == {"succeeded": 2}
