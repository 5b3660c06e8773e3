"""The progress reporter's counts: done, failed, in flight, spend (plain lines when not a TTY)."""

import io

from batch_runner.domain import RunEvent
from batch_runner.progress import ProgressReporter
from tests.factories import job


def test_counts_in_flight_jobs_exactly():
    out = io.StringIO()
    with ProgressReporter(stream=out, live=False) as rep:
        rep.event(RunEvent.START, None, run="r", total=3, budget_micro_usd=2_000_000)
        for i in (1, 2, 3):
            rep.event(RunEvent.SUBMITTED, job(i, source=f"/m/{i}.mp4"), request_id=f"r{i}")
        rep.event(RunEvent.SUCCEEDED, job(1, source="/m/1.mp4"), billed_micro_usd=600_000)
        rep.event(RunEvent.RETRY, job(2, source="/m/2.mp4"), error="runner_disconnected", delay_s=20)
        rep.event(RunEvent.FAILED, job(4, source="/m/4.mp4"), error="source changed")  # never submitted
    lines = out.getvalue().splitlines()
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
        rep.event(RunEvent.LOG, job(1, source="/m/a.mp4"), message="Generating: 50%")
    assert "job 1 (a.mp4): queue position 3" in out.getvalue()
    assert "job 1 (a.mp4): Generating: 50%" in out.getvalue()
