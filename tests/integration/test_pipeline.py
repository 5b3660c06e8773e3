"""The pool in stages, over real HTTP: a job holds its fal slot only until fal's outcome is
known, so a download held at the emulator does not stop new submits; uploads are made before
the claims that need them; a stop leaves handed-off jobs resumable and paid once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx

from batch_runner import runner
from tests.integration.run_helpers import Bench, make_bench

LONG_HOLD_S = 50  # below the client's 60 s read timeout: holds here end by release, never by time
POLLS = 3000
POLL_S = 0.02
PRICE_MICRO_USD = 300_000  # one 5 s reframe at 540p (test_crash_windows: 2 jobs, 600,000)


def _holds(bench: Bench) -> dict[str, Any]:
    return httpx.get(f"{bench.emulator.url}/_emulator/holds", timeout=10).json()


def _accepted(bench: Bench) -> int:
    return sum(1 for r in bench.emulator_log() if r["request_id"])


def _until(what: str, ready: Callable[[], bool]) -> None:
    for _ in range(POLLS):
        if ready():
            return
        time.sleep(POLL_S)
    raise AssertionError(f"never happened: {what}")


class _Background:
    """A run in a thread, so the test can look at the emulator and the tables meanwhile."""

    def __init__(self, bench: Bench, **pool_kw: Any) -> None:
        self.stop = threading.Event()
        self.result: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._go, args=(bench, pool_kw), daemon=True)
        self.thread.start()

    def _go(self, bench: Bench, pool_kw: dict[str, Any]) -> None:
        try:
            self.result["summary"] = bench.run(stop=self.stop, **pool_kw)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread, which raises it
            self.result["error"] = exc

    def finish(self) -> Any:
        self.thread.join(timeout=120)
        assert not self.thread.is_alive(), "the run did not end"
        if "error" in self.result:
            raise self.result["error"]
        return self.result["summary"]


def _release_holds(bench: Bench) -> None:
    httpx.delete(f"{bench.emulator.url}/_emulator/holds", timeout=10)


def _all_delivered_and_paid_once(bench: Bench, jobs: int) -> None:
    log = bench.emulator_log()
    accepted = [r for r in log if r["request_id"]]
    assert len(accepted) == len({r["input_sha256"] for r in accepted}) == jobs  # each input sent once
    fal = sum(int(Decimal(r["cost_usd"]) * 1_000_000) for r in log if r.get("cost_usd"))
    ours = bench.sql("select coalesce(sum(billed_micro_usd), 0) from attempts")[0][0]
    assert fal == ours == jobs * PRICE_MICRO_USD
    assert dict(bench.sql("select state, count(*) from jobs group by state")) == {"succeeded": jobs}
    assert bench.sql("select count(*) from outputs") == [(jobs,)]
    assert not list(bench.root.rglob("*.part"))


def test_a_held_download_does_not_stop_new_submits_at_concurrency_one(tmp_path, media, emulator_factory):
    # Every download is held. One thread per job end to end would send one submit and wait; in
    # stages the slot goes on: the delivery stage holds one output and queues two (2 × the cap),
    # and the slot thread waits with the fourth for room (back-pressure), never sending the fifth.
    emu = emulator_factory(hold_download_s=LONG_HOLD_S)
    bench = make_bench(tmp_path, media, emu, clips=3)  # 6 jobs
    run = _Background(bench, concurrency=1)
    try:
        _until("four submits while the first download is held", lambda: _accepted(bench) == 4)
        _until("the fourth output handed over", lambda: _states(bench).get("downloading") == 4)
        held = _holds(bench)["download"]
        assert (held["held_now"], held["held_total"]) == (1, 1)  # all four sent while one download hangs
        assert _states(bench) == {"downloading": 4, "queued": 2}
        assert _handed_off_with_url(bench) == 4  # a crash now would leave them resumable
    finally:
        _release_holds(bench)
    summary = run.finish()
    assert summary.exit_error() is None
    _all_delivered_and_paid_once(bench, 6)


def test_slots_are_refilled_while_downloads_are_held_at_concurrency_two(tmp_path, media, emulator_factory):
    emu = emulator_factory(hold_download_s=LONG_HOLD_S)  # fal runs 2 at once (the emulator's default)
    bench = make_bench(tmp_path, media, emu, clips=3)  # 6 jobs
    run = _Background(bench, concurrency=2)
    try:
        _until("both delivery threads held", lambda: _holds(bench)["download"]["held_now"] == 2)
        _until("every job submitted while downloads are held", lambda: _accepted(bench) == 6)
        assert _holds(bench)["download"]["held_total"] == 2  # no download got through meanwhile
        assert _accepted(bench) > 2  # the old design: two threads, both stuck downloading
    finally:
        _release_holds(bench)
    run.finish()
    health = httpx.get(f"{emu.url}/_emulator/health", timeout=10).json()
    assert health["peak_open_requests"] <= 2  # the in-flight cap held at fal throughout
    _all_delivered_and_paid_once(bench, 6)


def test_uploads_are_made_before_their_jobs_are_claimed(tmp_path, media, emulator_factory):
    # The first submit is held: its job holds the only slot, nothing else can be claimed, yet the
    # next queued jobs' sources are already uploaded (the look-ahead claims nothing).
    emu = emulator_factory(hold_submit_s=LONG_HOLD_S, hold_submit_count=1)
    bench = make_bench(tmp_path, media, emu, clips=2)  # 4 jobs, 2 sources
    run = _Background(bench, concurrency=1)
    try:
        _until("the first submit held", lambda: _holds(bench)["submit"]["held_now"] == 1)
        _until("the other source uploaded too", lambda: bench.sql("select count(*) from uploads") == [(2,)])
        assert bench.sql("select count(*) from attempts") == [(1,)]  # nothing else was claimed
        assert _states(bench) == {"submitting": 1, "queued": 3}
    finally:
        _release_holds(bench)
    run.finish()
    assert bench.sql("select count(*) from uploads") == [(2,)]  # each source once: the claims reused them
    _all_delivered_and_paid_once(bench, 4)


def test_a_stop_leaves_handed_off_jobs_resumable_and_the_next_run_delivers_them(tmp_path, media, emulator_factory):
    emu = emulator_factory(hold_download_s=LONG_HOLD_S, hold_download_count=1)
    bench = make_bench(tmp_path, media, emu, clips=2)  # 4 jobs
    run = _Background(bench, concurrency=1)
    try:
        _until("every output handed over", lambda: _states(bench).get("downloading") == 4)
        run.stop.set()  # Ctrl-C: the held download is finished, the waiting ones are let go
    finally:
        _release_holds(bench)
    summary = run.finish()
    assert summary.stopped_by == runner.StopReason.INTERRUPT
    left = bench.sql("select state, lease_owner from jobs where state <> 'succeeded'")
    assert left and all(row == ("downloading", None) for row in left)  # let go, not held by a dead lease
    assert _handed_off_with_url(bench) == len(left)
    assert _states(bench).get("succeeded", 0) + len(left) == 4
    bench.run(manifest=False, batches=["b"], concurrency=1)
    _all_delivered_and_paid_once(bench, 4)


def _states(bench: Bench) -> dict[str, int]:
    return {s: int(n) for s, n in bench.sql("select state, count(*) from jobs group by state")}


def _handed_off_with_url(bench: Bench) -> int:
    """Jobs in `downloading` whose attempt keeps fal's output URL (what a later run fetches)."""
    return bench.sql(
        "select count(*) from jobs j join attempts a on a.job_id = j.id and a.number = j.attempt_count "
        "where j.state = 'downloading' and a.output_url is not null"
    )[0][0]
