"""kill -9 inside the two windows where money is most at risk, put there on purpose with the
emulator's holds (not by a lucky timer): between writing the attempt and hearing fal's answer to
the submit, and in the middle of a download. After a restart, every job is paid once and
delivered once, and our ledger equals fal's bill."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import httpx

from tests.integration.run_helpers import make_bench

EXE = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "batch-runner"
POLLS = 3000


def _env(bench) -> dict[str, str]:
    env = {
        **os.environ,
        "BATCH_RUNNER_DB": bench.db_url,
        "BATCH_RUNNER_FAL_URL": bench.emulator.url,
        "FAL_KEY": "crash-test-key",
    }
    env.pop("CI", None)
    return env


def _held(bench, kind: str) -> bool:
    return httpx.get(f"{bench.emulator.url}/_emulator/holds", timeout=10).json()[kind]["held_now"] > 0


def _kill_when_held(bench, kind: str, inside: Callable[[], bool] = lambda: True) -> None:
    """Start a run and kill -9 it once the emulator holds it in the `kind` window and `inside()`
    says the runner is in it too (the hold starts when the emulator has sent its part: on a
    loaded machine the runner may take a moment to act on it)."""
    proc = subprocess.Popen(
        [str(EXE), "run", str(bench.manifest), "--concurrency", "1"],
        env=_env(bench),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(POLLS):
            if _held(bench, kind) and inside():
                break
            assert proc.poll() is None, "the run ended before it reached the window"
            time.sleep(0.02)
        else:
            raise AssertionError(f"the run never reached the {kind} hold")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    httpx.delete(f"{bench.emulator.url}/_emulator/holds", timeout=10)  # later submits and downloads flow


def _paid_once_delivered_once(bench, tmp_path: Path) -> None:
    log = bench.emulator_log()
    accepted = [r for r in log if r["request_id"]]
    assert len(accepted) == len({r["input_sha256"] for r in accepted}) == 2  # each input reached fal once
    fal = sum(int(Decimal(r["cost_usd"]) * 1_000_000) for r in log if r.get("cost_usd"))
    ours = bench.sql("select coalesce(sum(billed_micro_usd), 0) from attempts")[0][0]
    assert fal == ours == 2 * 300_000
    assert dict(bench.sql("select state, count(*) from jobs group by state")) == {"succeeded": 2}
    assert len(list((tmp_path / "out" / "b").glob("*.mp4"))) == 2
    assert bench.sql("select count(*) from outputs") == [(2,)]
    assert not list(tmp_path.rglob("*.part"))


def test_kill_9_between_the_submit_and_fals_answer_then_restart(tmp_path, media, emulator_factory):
    emu = emulator_factory(speed=200, hold_submit_s=60, hold_submit_count=1)
    bench = make_bench(tmp_path, media, emu, clips=1)
    _kill_when_held(bench, "submit")  # fal has the request; the runner never heard its id
    attempt = bench.sql("select state, request_id from attempts")
    assert attempt == [("sending", None)]
    proc = subprocess.run(
        [str(EXE), "run", str(bench.manifest), "--concurrency", "1", "--json"],
        env=_env(bench),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "adopted" in proc.stderr and "Traceback" not in proc.stderr
    _paid_once_delivered_once(bench, tmp_path)


def test_kill_9_in_the_middle_of_a_download_then_restart(tmp_path, media, emulator_factory):
    emu = emulator_factory(speed=200, hold_download_s=60, hold_download_count=1)
    bench = make_bench(tmp_path, media, emu, clips=1)
    _kill_when_held(bench, "download", inside=lambda: any(tmp_path.rglob("*.part")))  # half the file written
    assert bench.sql("select state from jobs where state = 'downloading'") == [("downloading",)]
    assert list(tmp_path.rglob("*.part"))  # the dead process's half file
    proc = subprocess.run(
        [str(EXE), "run", str(bench.manifest), "--concurrency", "1"],
        env=_env(bench),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    _paid_once_delivered_once(bench, tmp_path)
