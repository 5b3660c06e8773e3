"""Runs against the emulator over real HTTP: the happy path and every injected fault ends in
the right state, with nothing lost and nothing paid twice."""

from __future__ import annotations

import json
from datetime import UTC
from decimal import Decimal

import pytest

from batch_runner.errors import AccountLockedError, BudgetExceededError, JobsFailedError
from tests.integration.run_helpers import REFRAME_MANIFEST, make_bench


def _states(bench) -> dict[str, int]:
    return dict(bench.sql("select state, count(*) from jobs group by state"))


def _accepted(bench) -> list[dict]:
    return [r for r in bench.emulator_log() if r["request_id"]]


def test_happy_path_verifies_every_output_and_bills_exactly(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(tmp_path, media, db_url=db_url, emulator=emulator_factory())
    summary = bench.run()
    assert summary.exit_error() is None and summary.counts == {"succeeded": 4}
    assert summary.billed_micro_usd == 4 * 300_000 == summary.estimated_micro_usd  # 5 s × $0.06 at 540p
    for out in sorted((tmp_path / "out" / "b").glob("*.mp4")):
        side = json.loads(out.with_name(out.name + ".json").read_text())
        assert side["billed_cost_usd"] == "0.30" and side["request_id"] and len(side["sha256"]) == 64
        assert (side["width"], side["height"]) in ((540, 960), (540, 540))
    assert len(list((tmp_path / "out" / "b").glob("*.mp4"))) == 4
    assert not list((tmp_path / "out" / "b").glob(".*.part"))
    log = _accepted(bench)
    assert len(log) == 4 and len({r["input_sha256"] for r in log}) == 4
    assert bench.sql("select count(*) from uploads") == [(2,)]  # each source uploaded once


def test_rate_limits_gateway_errors_and_timeouts_are_retried_transparently(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(
        tmp_path,
        media,
        db_url=db_url,
        emulator=emulator_factory(faults="rate_limit=1/3,bad_gateway=1/2,gateway_timeout=1/1"),
    )
    summary = bench.run()
    assert summary.counts == {"succeeded": 4}
    refused = [r for r in bench.emulator_log() if not r["request_id"]]
    assert len(refused) >= 1 and len(_accepted(bench)) == 4  # refused submits never created requests


def test_dropped_submit_goes_uncertain_and_the_next_run_adopts_it_from_fals_list(
    tmp_path, media, emulator_factory, db_url
):
    bench = make_bench(tmp_path, media, db_url=db_url, emulator=emulator_factory(faults="drop_after_submit=1/1"))
    summary = bench.run()
    assert summary.counts == {"succeeded": 3, "uncertain": 1}
    assert isinstance(summary.exit_error(), JobsFailedError)
    [uncertain] = summary.failed
    assert uncertain["state"] == "uncertain" and "may have been accepted" in uncertain["error"]
    log = _accepted(bench)
    assert len(log) == 4  # the dropped request exists at fal (and will bill): it was not sent again
    again = bench.run(manifest=False, batches=["b"])  # asks fal's request list first: found, adopted
    assert again.counts == {"succeeded": 1} and len(_accepted(bench)) == 4  # followed, never sent again
    assert again.billed_micro_usd == 300_000


def test_retry_uncertain_resubmits_on_purpose_and_keeps_history(tmp_path, media, emulator_factory, db_url):
    from batch_runner import runner
    from batch_runner.domain import JobState

    bench = make_bench(tmp_path, media, db_url=db_url, emulator=emulator_factory(faults="drop_after_submit=1/1"))
    bench.run()
    jobs = runner.select_jobs(bench.repo, ["b"], [JobState.UNCERTAIN], [])
    assert runner.retry_jobs(bench.repo, jobs, [JobState.UNCERTAIN]) == 1
    summary = bench.run(manifest=False, batches=["b"])
    assert summary.counts == {"succeeded": 1}
    attempts = bench.sql("select number, state from attempts where job_id = ? order by number", jobs[0].id)
    assert attempts == [(1, "uncertain"), (2, "succeeded")]
    assert len(_accepted(bench)) == 5


def test_failed_run_gets_a_new_attempt_and_succeeds(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(tmp_path, media, db_url=db_url, emulator=emulator_factory(faults="fail=1/1"), clips=1)
    summary = bench.run()
    assert summary.counts == {"succeeded": 2} and summary.exit_error() is None
    history = bench.sql("select a.number, a.state, a.billed_micro_usd from attempts a order by a.job_id, a.number")
    assert (1, "failed", 0) in history and history.count((2, "succeeded", 300_000)) == 1
    assert summary.billed_micro_usd == 2 * 300_000  # the failed run was not billed


def test_persistent_failures_stop_after_max_attempts(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(tmp_path, media, db_url=db_url, emulator=emulator_factory(faults="fail=1"), clips=1)
    summary = bench.run(max_attempts=2)
    assert summary.counts == {"failed": 2} and summary.billed_micro_usd == 0
    assert all("after 2 attempts" in f["error"] for f in summary.failed)
    assert bench.sql("select count(*) from attempts") == [(4,)]


def test_content_refusal_is_terminal(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(tmp_path, media, db_url=db_url, emulator=emulator_factory(faults="refuse=1"), clips=1)
    summary = bench.run()
    assert summary.counts == {"failed": 2}
    assert bench.sql("select count(*) from attempts") == [(2,)]  # no second attempt
    assert all("content_policy_violation" in f["error"] for f in summary.failed)


def test_locked_account_stops_everything_and_loses_nothing(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(tmp_path, media, db_url=db_url, emulator=emulator_factory(faults="lock=1"))
    summary = bench.run()
    assert isinstance(summary.exit_error(), AccountLockedError) and summary.exit_error().exit_code == 9
    assert _states(bench) == {"queued": 4}
    assert bench.sql("select distinct state from attempts") in ([("unsent",)], [])
    assert bench.sql("select status from runs") == [("failed",)]  # the reason is in the run's summary


def test_truncated_and_slow_downloads_still_deliver(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(
        tmp_path, media, db_url=db_url, emulator=emulator_factory(faults="truncate_download=1/2,slow_download=1/1")
    )
    summary = bench.run()
    assert summary.counts == {"succeeded": 4}
    assert len(_accepted(bench)) == 4


def test_expired_result_is_failed_and_counted_as_billed(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(tmp_path, media, db_url=db_url, emulator=emulator_factory(faults="expire=1/1"), clips=1)
    summary = bench.run()
    assert summary.counts == {"succeeded": 1, "failed": 1}
    assert "result expired" in summary.failed[0]["error"]
    assert summary.billed_micro_usd == 2 * 300_000


def test_an_output_longer_than_the_convention_is_delivered_with_a_warning_or_failed_when_strict(
    tmp_path, media, emulator_factory, db_url
):
    # At 1 frame per second a 0.5 s source comes back 1 s long. fal promises no exact length: by
    # default the billed output is delivered with a warning; --strict-verify fails it, kept aside.
    bench = make_bench(tmp_path, media, db_url=db_url, emulator=emulator_factory(fps=1), clips=1, clip="c0_5")
    summary = bench.run()
    assert summary.counts == {"succeeded": 2} and summary.billed_micro_usd == 2 * 60_000
    warned = [i["message"] for k, _, i in bench.events if k == "warning"]
    assert len(warned) == 2 and all("where the output convention expects 0.5" in w for w in warned)
    assert bench.sql("select count(*) from events where kind = 'output.check_warning'") == [(2,)]

    (tmp_path / "strict").mkdir()
    strict = make_bench(tmp_path / "strict", media, db_url=None, emulator=emulator_factory(fps=1), clips=1, clip="c0_5")
    summary = strict.run(strict_verify=True)
    assert summary.counts == {"failed": 2}
    assert all("output check failed: 1" in f["error"] and "(--strict-verify)" in f["error"] for f in summary.failed)
    aside = sorted(p.name for p in (tmp_path / "strict" / "out" / "b").iterdir())
    assert aside == ["clip0_1x1.rejected.mp4", "clip0_9x16.rejected.mp4"]
    assert summary.billed_micro_usd == 2 * 60_000


def test_source_changed_after_planning_fails_before_paying(tmp_path, media, emulator_factory, db_url):
    from batch_runner import planner
    from batch_runner.pricing import load_price_table

    bench = make_bench(tmp_path, media, db_url=db_url, emulator=emulator_factory(), clips=1)
    planned = planner.plan(bench.manifest, bench.settings, load_price_table(), bench.repo)
    planner.enqueue(planned, bench.repo)
    (tmp_path / "media" / "clip0.mp4").write_bytes(media["c5_04"].read_bytes())
    summary = bench.run(manifest=False, batches=["b"])
    assert summary.counts == {"failed": 2} and summary.billed_micro_usd == 0
    assert "source changed after it was planned" in summary.failed[0]["error"]
    assert _accepted(bench) == []


def test_budget_is_never_exceeded_under_concurrency(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(
        tmp_path, media, db_url=db_url, emulator=emulator_factory(concurrency=8), clips=6
    )  # 12 jobs × $0.30
    with pytest.raises(BudgetExceededError):
        raise bench.run(max_cost=1_000_000, concurrency=8).exit_error()
    billed = sum(Decimal(r["cost_usd"] or "0") for r in bench.emulator_log())
    assert billed <= Decimal("1.00") and len(_accepted(bench)) == 3
    states = _states(bench)
    assert states == {"succeeded": 3, "queued": 9}
    assert bench.sql("select reserved_micro_usd, budget_micro_usd, status from runs") == [
        (900_000, 1_000_000, "budget_stop")
    ]


def test_a_budget_stop_says_what_was_left_and_what_did_not_run(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(tmp_path, media, db_url=db_url, emulator=emulator_factory(), clips=2)
    summary = bench.run(max_cost=700_000)
    err = summary.exit_error()
    assert isinstance(err, BudgetExceededError) and err.exit_code == 5
    assert "$0.10 of $0.70 left" in err.message and "2 job(s) did not run" in err.message


def test_every_step_is_an_audit_event(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(tmp_path, media, db_url=db_url, emulator=emulator_factory(), clips=1)
    bench.run()
    kinds = [k for (k,) in bench.sql("select kind from events where job_id = 1 order by id")]
    assert kinds[:1] == ["job.enqueued"]
    for step in (
        "job.claimed",
        "attempt.sending",
        "job.submitted",
        "attempt.submitted",
        "job.downloading",
        "job.succeeded",
    ):
        assert step in kinds
    moves = bench.sql("select from_state, to_state, host, pid from events where job_id = 1 and to_state is not null")
    assert ("queued", "submitting") in [(a, b) for a, b, _, _ in moves]
    assert all(host and pid for _, _, host, pid in moves)


def test_without_the_status_stream_it_polls_at_an_adaptive_interval(tmp_path, media, emulator_factory, db_url):
    import httpx

    server = emulator_factory(faults="stream_unavailable=1", speed=60)  # 1 s of processing per request
    bench = make_bench(tmp_path, media, db_url=db_url, emulator=server, clips=1)
    summary = bench.run(poll_min_s=0.1, poll_max_s=0.5)
    assert summary.counts == {"succeeded": 2}
    health = httpx.get(f"{server.url}/_emulator/health").json()
    per_job = health["http_requests"]["api"] / 2
    assert 4 < per_job < 25  # polled, but not hammered every few milliseconds


def test_in_flight_cap_holds_at_fal(tmp_path, media, emulator_factory, db_url):
    import httpx

    server = emulator_factory(concurrency=8, speed=200)
    bench = make_bench(tmp_path, media, db_url=db_url, emulator=server, clips=4)
    summary = bench.run(concurrency=6, max_in_flight=2)
    assert summary.counts == {"succeeded": 8}
    assert httpx.get(f"{server.url}/_emulator/health").json()["peak_open_requests"] == 2


def _dead_worker_claimed_job_1(bench, attempt_state: str) -> None:
    """Enqueue the manifest, then leave job 1 as a worker on another machine would after dying
    mid-claim: state submitting, an expired lease, and one attempt in `attempt_state`."""
    from datetime import datetime, timedelta

    from sqlalchemy import insert, update

    from batch_runner import planner
    from batch_runner.db.models import Attempt, Job
    from batch_runner.pricing import load_price_table

    planner.enqueue(planner.plan(bench.manifest, bench.settings, load_price_table(), bench.repo), bench.repo)
    past = datetime.now(UTC) - timedelta(seconds=5)
    with bench.engine.begin() as conn:
        conn.execute(
            update(Job)
            .where(Job.id == 1)
            .values(state="submitting", attempt_count=1, lease_owner="otherhost:99:dead", lease_expires_at=past)
        )
        conn.execute(insert(Attempt).values(job_id=1, number=1, state=attempt_state, created_at=past))


def test_an_expired_lease_of_another_host_is_taken_over(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(tmp_path, media, db_url=db_url, emulator=emulator_factory(), clips=1)
    _dead_worker_claimed_job_1(bench, "preparing")  # it died before sending anything
    summary = bench.run(manifest=False, batches=["b"])
    assert summary.counts == {"succeeded": 2}
    attempts = bench.sql("select number, state from attempts where job_id = 1 order by number")
    assert attempts == [(1, "unsent"), (2, "succeeded")]  # never sent, so safely run again
    assert len([r for r in bench.emulator_log() if r["request_id"]]) == 2


def test_back_to_back_runs_are_separate_runs(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(tmp_path, media, db_url=db_url, emulator=emulator_factory(), clips=1)
    first = bench.run()
    second = bench.run(manifest=False, batches=["b"])
    assert first.run != second.run and first.counts == {"succeeded": 2} and second.counts == {}
    assert bench.sql("select count(*) from runs") == [(2,)]


def test_a_failed_attempt_and_its_retry_are_billed_and_recorded(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(tmp_path, media, db_url=db_url, emulator=emulator_factory(faults="fail=1/1"), clips=2)
    summary = bench.run(concurrency=4)
    assert summary.counts == {"succeeded": 4} and summary.billed_micro_usd == 4 * 300_000
    assert bench.sql("select state, count(*) from attempts group by state order by state") == [
        ("failed", 1),
        ("succeeded", 4),
    ]
    assert bench.sql("select reserved_micro_usd, status from runs") == [(1_200_000, "finished")]
    assert len([r for r in bench.emulator_log() if r["request_id"]]) == 5


POLICY_MANIFEST = (
    REFRAME_MANIFEST
    + """budget:
  max_usd_per_day: "1.00"
  warn_at_usd: "0.50"
"""
)


def test_per_day_budget_holds_across_runs(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(
        tmp_path, media, db_url=db_url, emulator=emulator_factory(), clips=3, manifest_text=POLICY_MANIFEST
    )  # 6 × $0.30
    first = bench.run()
    err = first.exit_error()
    assert isinstance(err, BudgetExceededError) and first.counts == {"succeeded": 3}
    assert "batch per day budget" in err.message and "$0.10 of $1.00 left in the last 24 h" in err.message
    second = bench.run(manifest=False, batches=["b"])  # minutes later: the same 24 hours
    assert second.counts == {} and isinstance(second.exit_error(), BudgetExceededError)
    billed = sum(Decimal(r["cost_usd"] or "0") for r in bench.emulator_log())
    assert billed == Decimal("0.90")


def test_account_per_day_budget_spans_batches(tmp_path, media, emulator_factory, db_url):
    emu = emulator_factory()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = make_bench(tmp_path / "a", media, db_url=db_url, emulator=emu, clips=1, batch="a")
    b = make_bench(tmp_path / "b", media, db_url=db_url, emulator=emu, clips=1, batch="b")
    for bench in (a, b):
        bench.extra_settings = {"max_usd_per_day_micro": 1_000_000}
    assert a.run().counts == {"succeeded": 2}  # $0.60
    second = b.run()
    assert second.counts == {"succeeded": 1} and second.budget_stop_scope == "account per day"


def test_warning_threshold_is_reported_once_and_audited(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(
        tmp_path, media, db_url=db_url, emulator=emulator_factory(), clips=1, manifest_text=POLICY_MANIFEST
    )
    summary = bench.run()
    assert summary.counts == {"succeeded": 2}
    warnings = [info["message"] for kind, _, info in bench.events if kind == "warning"]
    assert len(warnings) == 1 and "past its $0.50 warning threshold" in warnings[0]
    assert bench.sql("select count(*) from events where kind = 'run.budget_warning'") == [(1,)]


def test_billed_amounts_record_where_they_came_from(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(tmp_path, media, db_url=db_url, emulator=emulator_factory(), clips=1)
    bench.run()
    assert bench.sql("select distinct price_source, unit_price_micro_usd from attempts") == [
        ("fal pricing API", 60_000)
    ]


def test_without_billable_units_the_verified_output_is_priced(tmp_path, media, emulator_factory, db_url):
    # 5.04 s sources: Ray 3.2 reframe bills 6 started source seconds at $0.06, whatever the
    # rendered output's exact length; without fal's units we must still record what fal billed.
    bench = make_bench(
        tmp_path, media, db_url=db_url, emulator=emulator_factory(send_billable_units=False), clips=1, clip="c5_04"
    )
    summary = bench.run()
    at_fal = sum(Decimal(r["cost_usd"]) for r in bench.emulator_log() if r["request_id"])
    assert summary.counts == {"succeeded": 2}
    assert Decimal(summary.billed_micro_usd) / 1_000_000 == at_fal == Decimal("0.72")
    assert bench.sql("select distinct price_source from attempts") == [
        ("provisional: fal-published@2026-11-21 on the verified output",)
    ]


def test_a_run_budget_can_come_from_settings(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(tmp_path, media, db_url=db_url, emulator=emulator_factory(), clips=1)
    bench.extra_settings = {"max_usd_per_run_micro": 400_000}
    summary = bench.run()
    assert summary.counts == {"succeeded": 1} and summary.budget_micro_usd == 400_000
    assert summary.budget_stop_scope == "run"


def test_a_run_reports_the_jobs_it_found_half_sent(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(tmp_path, media, db_url=db_url, emulator=emulator_factory(), clips=1)
    _dead_worker_claimed_job_1(bench, "sending")  # it died between sending and recording the answer
    summary = bench.run(manifest=False, batches=["b"])
    assert summary.counts == {"succeeded": 1, "uncertain": 1}
    assert isinstance(summary.exit_error(), JobsFailedError)
    assert [f["state"] for f in summary.failed] == ["uncertain"]
