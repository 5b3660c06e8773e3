"""The fault soak: several seeds × 20 % of every emulator fault kind on every route it applies to,
plus an outage of every read longer than one call's retry budget. After `run` and then rounds of
`resolve` and `retry`, every job has succeeded or ended for a reason fal gave, nothing was paid
twice except where fal itself lost the result, and our ledger equals fal's bill to the cent."""

from __future__ import annotations

import re
from collections import Counter
from decimal import Decimal

import pytest

from batch_runner import resolve, runner
from batch_runner.domain import JobState
from tests.integration.run_helpers import make_bench

EVERY_FAULT = ",".join(
    f"{name}=0.2"
    for name in (
        "rate_limit",
        "bad_gateway",
        "gateway_timeout",
        "drop_after_submit",
        "fail",
        "refuse",
        "slow_download",
        "truncate_download",
        "lock",
        "expire",
        "stream_unavailable",
    )
)
# fal seconds at speed 1000: from 0.8 s to 2.3 s of real time, far longer than one call's retries (~0.1 s)
OUTAGE = "outage=800+1500"
TERMINAL_REASONS = re.compile(r"content_policy_violation|after \d+ attempts|result expired|output check failed")
ROUNDS = 12  # each round can itself meet a fault (20 % of every kind): allow a few more than usually needed


def _settled(bench) -> bool:
    open_states = bench.sql(
        "select count(*) from jobs where state not in ('succeeded','failed','rejected','cancelled')"
    )
    redeliverable = runner.retry_plan(
        bench.repo, runner.select_jobs(bench.repo, ["b"], [JobState.FAILED], []), [JobState.FAILED]
    )
    return open_states == [(0,)] and not any(i.how == "redeliver" for i in redeliverable)


@pytest.mark.parametrize("seed", [11, 23, 37])
def test_every_fault_at_once_ends_with_every_cent_accounted(tmp_path, media, emulator_factory, seed):
    emu = emulator_factory(seed=seed, faults=f"{EVERY_FAULT},{OUTAGE}", concurrency=4)
    bench = make_bench(tmp_path, media, emu, clips=5)
    summaries = [bench.run(concurrency=4, settle_after_s=0.0)]
    for _ in range(ROUNDS):
        if _settled(bench):
            break
        resolve.resolve_jobs(bench.settings, bench.repo, ["b"], listing_lag_s=0.0)
        failed = runner.select_jobs(bench.repo, ["b"], [JobState.FAILED], [])
        redeliver = [i.job for i in runner.retry_plan(bench.repo, failed, [JobState.FAILED]) if i.how == "redeliver"]
        if redeliver:
            runner.retry_jobs(bench.repo, redeliver, [JobState.FAILED])
        summaries.append(bench.run(manifest=False, batches=["b"], concurrency=4, settle_after_s=0.0))
    assert _settled(bench), bench.sql("select id, state, last_error from jobs where state != 'succeeded'")

    for s in summaries:  # no run stopped for anything but a locked account
        assert s.error is None or s.error.exit_code == 9, s.error
        assert not any("unexpected error" in (info.get("error") or "") for _, _, info in bench.events)
    states = dict(bench.sql("select state, count(*) from jobs group by state"))
    assert sum(states.values()) == 10 and set(states) <= {"succeeded", "failed", "rejected"}
    for _, error in bench.sql("select id, last_error from jobs where state != 'succeeded'"):
        assert TERMINAL_REASONS.search(error or ""), error

    fal = bench.emulator_log()
    billed_at_fal = {r["request_id"]: int(Decimal(r["cost_usd"]) * 1_000_000) for r in fal if r.get("cost_usd")}
    ours = dict(bench.sql("select request_id, billed_micro_usd from attempts where request_id is not null"))
    assert set(billed_at_fal) <= set(ours), "fal billed a request we have no record of"
    assert sum(billed_at_fal.values()) == int(bench.sql("select coalesce(sum(billed_micro_usd),0) from attempts")[0][0])
    per_job = Counter(job for job, rid in bench.sql("select job_id, request_id from attempts") if rid in billed_at_fal)
    lost = dict(bench.sql("select job_id, count(*) from attempts where error like '%result expired%' group by job_id"))
    for job, paid in per_job.items():  # paid twice only where fal lost the result (waste)
        assert paid <= 1 + lost.get(job, 0), (job, paid)
