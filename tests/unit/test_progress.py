"""The progress reporter's counts: done, failed, in flight, spend (plain lines when not a TTY)."""

import io
from datetime import UTC, datetime, timedelta, timezone

from batch_runner.domain import RunEvent
from batch_runner.progress import ProgressReporter
from tests.factories import job


def _clock() -> datetime:
    return datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=UTC)


def test_counts_in_flight_jobs_exactly():
    out = io.StringIO()
    with ProgressReporter(stream=out, live=False, clock=_clock) as rep:
        rep.event(RunEvent.START, None, run="r", total=3, budget_micro_usd=2_000_000)
        for i in (1, 2, 3):
            rep.event(RunEvent.SUBMITTED, job(i, source=f"/m/{i}.mp4"), request_id=f"r{i}")
        rep.event(RunEvent.SUCCEEDED, job(1, source="/m/1.mp4"), billed_micro_usd=600_000)
        rep.event(RunEvent.RETRY, job(2, source="/m/2.mp4"), error="runner_disconnected", delay_s=20)
        rep.event(RunEvent.FAILED, job(4, source="/m/4.mp4"), error="source changed")  # never submitted
    lines = [line.removeprefix("2026-03-04T05:06:07Z ") for line in out.getvalue().splitlines()]
    assert lines[0] == "run r: 3 job(s) to do, budget $2.00"
    assert lines[1] == "job 1 (1.mp4) succeeded  [1/3, failed 0  in flight 2  spent $0.60 of $2.00]"
    assert lines[-1] == "job 4 (4.mp4) failed: source changed  [2/3, failed 1  in flight 1  spent $0.60 of $2.00]"


def test_live_bar_shows_counts_spend_and_eta():
    out = io.StringIO()
    with ProgressReporter(stream=out, live=True) as rep:
        rep.event(RunEvent.START, None, run="r", total=2, budget_micro_usd=None)
        rep.event(RunEvent.SUBMITTED, job(1), request_id="a")
        rep.event(RunEvent.SUCCEEDED, job(1), billed_micro_usd=300_000)
        rep.event(RunEvent.FAILED, job(2, source="/m/b.mp4"), error="content_policy_violation")
    text = out.getvalue()
    assert "2/2" in text and "failed 1" in text and "spent $0.30" in text and "ETA" in text
    assert "job 2 (b.mp4) failed: content_policy_violation" in text


def test_verbose_shows_queue_positions_and_logs():
    out = io.StringIO()
    with ProgressReporter(verbose=1, stream=out, live=False) as rep:
        rep.event(RunEvent.START, None, run="r", total=1, budget_micro_usd=None)
        rep.event(RunEvent.QUEUED, job(1, source="/m/a.mp4"), position=3)
        rep.event(RunEvent.LOG, job(1, source="/m/a.mp4"), attempt=1, lines=["Generating: 50%"])
    assert "job 1 (a.mp4): queue position 3" in out.getvalue()
    assert "job 1 (a.mp4): Generating: 50%" in out.getvalue()


def test_plain_lines_start_with_an_iso_utc_timestamp_to_the_second():
    out = io.StringIO()
    paris = datetime(2026, 3, 4, 6, 6, 7, 999_999, tzinfo=timezone(timedelta(hours=1)))
    with ProgressReporter(stream=out, live=False, clock=lambda: paris) as rep:
        rep.event(RunEvent.START, None, run="r", total=1, budget_micro_usd=None)
        rep.event(RunEvent.FAILED, job(1, source="/m/a.mp4"), error="boom")
    lines = out.getvalue().splitlines()
    assert lines[0] == "2026-03-04T05:06:07Z run r: 1 job(s) to do"
    assert lines[1].startswith("2026-03-04T05:06:07Z job 1 (a.mp4) failed: boom")


def test_live_bar_lines_carry_no_timestamp():
    out = io.StringIO()
    with ProgressReporter(stream=out, live=True, clock=_clock) as rep:
        rep.event(RunEvent.START, None, run="r", total=1, budget_micro_usd=None)
        rep.event(RunEvent.FAILED, job(1, source="/m/b.mp4"), error="boom")
    assert "job 1 (b.mp4) failed: boom" in out.getvalue()
    assert "2026-03-04T" not in out.getvalue()


def test_verbose_prints_each_log_line_of_a_job_once():
    """fal answers every status with the whole log so far: each line is printed once."""
    out = io.StringIO()
    a, b = job(1, source="/m/a.mp4"), job(2, source="/m/b.mp4")
    with ProgressReporter(verbose=1, stream=out, live=False, clock=_clock) as rep:
        rep.event(RunEvent.START, None, run="r", total=2, budget_micro_usd=None)
        rep.event(RunEvent.LOG, a, attempt=10, lines=["start"])
        rep.event(RunEvent.LOG, b, attempt=20, lines=["b start"])
        rep.event(RunEvent.LOG, a, attempt=10, lines=["start", "50%"])
        rep.event(RunEvent.LOG, a, attempt=10, lines=["start", "50%"])  # nothing new
        rep.event(RunEvent.LOG, a, attempt=10, lines=["start", "50%", "50%", "done"])  # a repeated line is new
        rep.event(RunEvent.LOG, b, attempt=21, lines=["b start"])  # a new attempt: a new request's log
    logged = [line.split(": ", 1)[1] for line in out.getvalue().splitlines()[1:]]
    assert logged == ["start", "b start", "50%", "50%", "done", "b start"]
