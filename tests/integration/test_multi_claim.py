"""Several claims in one transaction (`claim_many`), on both backends: each claim is decided and
reserved as a lone claim would be, the in-flight cap and the run budget hold, two workers never
take the same job, and a worker that dies after a multi-claim leaves every job resumable."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from batch_runner import planner
from batch_runner.db.queue import JobQueue
from batch_runner.db.transition import ClaimKind
from batch_runner.domain import Actor, JobState
from batch_runner.errors import LeaseLostError
from batch_runner.pricing import load_price_table
from tests.integration.run_helpers import make_bench

PRICE = 300_000  # one 5 s reframe at 540p
SHORT = 0.2  # seconds: a lease that runs out within the test


@pytest.fixture
def bench(tmp_path, media, db_url):
    """Eight queued jobs (four clips × two aspect ratios); nothing talks to fal here."""
    b = make_bench(tmp_path, media, SimpleNamespace(url="http://127.0.0.1:9"), clips=4, db_url=db_url)
    planner.enqueue(planner.plan(b.manifest, b.settings, load_price_table(), b.repo), b.repo)
    assert b.sql("select count(*) from jobs") == [(8,)]
    return b


def _worker(bench, host: str, pid: int = 4242, lease_s: float = 600.0) -> JobQueue:
    return JobQueue(bench.repo.engine, Actor(host, pid, "tester"), lease_s)


def test_one_transaction_claims_several_jobs_up_to_the_in_flight_cap(bench):
    queue = _worker(bench, "a")
    run = queue.start_run("r", "b", None)
    got = queue.claim_many(run.id, None, max_in_flight=3, want=5)
    assert got.stop is None
    assert [c.job.id for c in got.claims] == [1, 2, 3]  # the cap, in claim order
    assert all(c.kind == ClaimKind.SUBMIT and c.job.state == JobState.SUBMITTING for c in got.claims)
    assert bench.sql("select job_id, number, state, reserved_micro_usd from attempts order by job_id") == [
        (1, 1, "preparing", PRICE),
        (2, 1, "preparing", PRICE),
        (3, 1, "preparing", PRICE),
    ]
    assert bench.sql("select reserved_micro_usd from runs") == [(3 * PRICE,)]
    assert bench.sql("select count(*) from events where kind = 'job.claimed'") == [(3,)]
    assert queue.claim_many(run.id, None, max_in_flight=3, want=5).claims == []  # the cap is full


def test_a_budget_stop_ends_the_list_and_keeps_the_claims_made_before_it(bench):
    queue = _worker(bench, "a")
    run = queue.start_run("r", "b", 2 * PRICE)  # room for two jobs
    got = queue.claim_many(run.id, None, max_in_flight=10, want=5)
    assert [c.job.id for c in got.claims] == [1, 2]
    assert got.stop is not None and got.stop.scope == "run" and got.stop.job_id == 3
    assert bench.sql("select reserved_micro_usd, budget_micro_usd from runs") == [(2 * PRICE, 2 * PRICE)]
    assert bench.sql("select count(*) from attempts") == [(2,)]
    assert bench.sql("select state from jobs where id = 3") == [("queued",)]


def test_the_warning_goes_to_the_one_claim_that_crosses_it(bench):
    queue = _worker(bench, "a")
    run = queue.start_run("r", "b", None, warn_at_micro_usd=2 * PRICE)
    got = queue.claim_many(run.id, None, max_in_flight=10, want=4)
    assert [c.warning is not None for c in got.claims] == [False, True, False, False]
    assert bench.sql("select count(*) from events where kind = 'run.budget_warning'") == [(1,)]


def test_live_requests_to_follow_come_first_and_are_each_leased(bench):
    a, b = _worker(bench, "a", lease_s=SHORT), _worker(bench, "b")
    run = a.start_run("shared", "b", None)
    for claim in a.claim_many(run.id, None, max_in_flight=10, want=2).claims:
        a.sending(claim, "0" * 64)
        a.submitted(claim, f"req-{claim.job.id}", "s", "r", "c", "0" * 64)
    time.sleep(SHORT + 0.1)  # A stalls past its leases
    got = b.claim_many(run.id, None, max_in_flight=10, want=4)
    assert [(c.kind, c.job.id) for c in got.claims] == [("follow", 1), ("follow", 2)]
    assert bench.sql("select lease_owner from jobs where id in (1, 2)") == [(b.worker,), (b.worker,)]


def test_a_worker_dead_after_a_multi_claim_leaves_each_job_resumable(bench):
    """Three claims in one transaction, then the worker stalls: the next claim's sweep requeues
    each unsent job exactly as it would a lone claim, and the stalled worker can send none."""
    a, b = _worker(bench, "a", lease_s=SHORT), _worker(bench, "b")
    run = a.start_run("shared", "b", None)
    taken = a.claim_many(run.id, None, max_in_flight=10, want=3).claims
    assert len(taken) == 3
    time.sleep(SHORT + 0.1)
    again = b.claim_many(run.id, None, max_in_flight=10, want=3).claims
    assert [(c.job.id, c.attempt.number) for c in again] == [(1, 2), (2, 2), (3, 2)]
    for claim in taken:
        with pytest.raises(LeaseLostError):
            a.sending(claim, "0" * 64)
    assert bench.sql("select job_id, number, state from attempts where number = 1 order by job_id") == [
        (1, 1, "unsent"),
        (2, 1, "unsent"),
        (3, 1, "unsent"),
    ]
    assert bench.sql("select reserved_micro_usd from runs") == [(3 * PRICE,)]  # A's reservations given back


def test_workers_claiming_many_at_once_never_take_the_same_job_and_keep_the_cap(bench):
    """Six workers on three machines claim up to three jobs a transaction, at once and again and
    again, finishing some: no job is claimed twice, never more than the cap is in flight."""
    workers = [_worker(bench, f"m{i % 3}", pid=100 + i) for i in range(6)]
    run = workers[0].start_run("shared", "b", None)
    cap, peak = 4, [0]
    held: list[tuple[JobQueue, object]] = []
    claimed: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(len(workers))

    def work(queue: JobQueue) -> None:
        start.wait()
        for _ in range(20):
            got = queue.claim_many(run.id, None, max_in_flight=cap, want=3)
            with lock:
                held.extend((queue, c) for c in got.claims)
                claimed.extend(c.job.id for c in got.claims)
                peak[0] = max(peak[0], len(held))
                mine = [h for h in held if h[0] is queue][:1]
                for h in mine:
                    held.remove(h)
            for q, c in mine:
                q.sending(c, "0" * 64)
                q.submitted(c, f"req-{c.job.id}", "s", "r", "c", "0" * 64)
                q.finish(c, JobState.SUCCEEDED, None, billed_micro_usd=PRICE)
            time.sleep(0.005)

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == list(range(1, 9))  # every job once, none twice
    assert peak[0] <= cap
    assert bench.sql("select count(*), count(distinct job_id) from attempts") == [(8, 8)]
