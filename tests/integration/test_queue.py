"""The queue between workers, on both backends: leases fence every change to a claimed job, so a
worker that stalled past its lease (a paused VM, a long network partition) and was taken over can
neither submit the job again nor settle it twice; dead workers on this machine are found at once."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from batch_runner import planner
from batch_runner.db.queue import JobQueue
from batch_runner.db.transition import Claim
from batch_runner.domain import Actor, JobState
from batch_runner.errors import LeaseLostError
from batch_runner.pricing import load_price_table
from tests.integration.run_helpers import make_bench

SHORT = 0.2  # seconds: the stalled worker's lease
PRICE = 300_000  # one 5 s reframe at 540p


@pytest.fixture
def bench(tmp_path, media, db_url):
    """Two queued jobs (one clip × two aspect ratios); nothing talks to fal here."""
    b = make_bench(tmp_path, media, SimpleNamespace(url="http://127.0.0.1:9"), clips=1, db_url=db_url)
    planner.enqueue(planner.plan(b.manifest, b.settings, load_price_table(), b.repo), b.repo)
    return b


def _worker(bench, host: str, pid: int = 4242, lease_s: float = 30.0, pid_namespace: str | None = None) -> JobQueue:
    return JobQueue(bench.repo.engine, Actor(host, pid, "tester"), lease_s, pid_namespace=pid_namespace)


def _claim(queue: JobQueue, run_id: int) -> Claim:
    claim = queue.claim(run_id, None, max_in_flight=10)
    assert isinstance(claim, Claim)
    return claim


def _stalled_then_taken_over(bench, *, submitted: bool) -> tuple[JobQueue, Claim, JobQueue, Claim, int]:
    """Worker A (machine a) claims job 1 and stalls past its lease; worker B (machine b) then
    claims, which sweeps or follows job 1."""
    a, b = _worker(bench, "a", lease_s=SHORT), _worker(bench, "b")
    run = a.start_run("shared", "b", None)
    ca = _claim(a, run.id)
    assert ca.job.id == 1
    if submitted:
        a.sending(ca, "0" * 64)
        a.submitted(ca, "req-1", "http://fal/status", "http://fal/result", "http://fal/cancel", "0" * 64)
    time.sleep(SHORT + 0.1)
    cb = _claim(b, run.id)
    return a, ca, b, cb, run.id


def test_a_stalled_worker_whose_claim_was_swept_never_sends(bench):
    a, ca, _b, cb, _run_id = _stalled_then_taken_over(bench, submitted=False)
    assert (cb.kind, cb.job.id, cb.attempt.number) == ("submit", 1, 2)  # never sent: safely claimed anew
    with pytest.raises(LeaseLostError):
        a.sending(ca, "0" * 64)
    assert bench.sql("select number, state from attempts where job_id = 1 order by number") == [
        (1, "unsent"),
        (2, "preparing"),
    ]
    assert bench.sql("select reserved_micro_usd from runs") == [(PRICE,)]  # A's reservation was given back


def test_a_stalled_follower_cannot_settle_a_job_another_worker_took_over(bench):
    a, ca, b, cb, _run_id = _stalled_then_taken_over(bench, submitted=True)
    assert (cb.kind, cb.job.id, cb.attempt.request_id) == ("follow", 1, "req-1")
    with pytest.raises(LeaseLostError):
        a.finish(
            ca,
            JobState.SUCCEEDED,
            None,
            billed_micro_usd=PRICE,
            output={"path": "/x.mp4", "sha256": "1" * 64, "size_bytes": 1},
        )
    with pytest.raises(LeaseLostError):
        a.progress(ca, JobState.DOWNLOADING)
    assert bench.sql("select count(*) from outputs") == [(0,)]  # nothing of A's finish was written
    # nor of its progress: the job's update is the fence, and the attempt's comes after it
    assert bench.sql("select state, output_url from attempts where job_id = 1") == [("submitted", None)]
    assert bench.sql("select count(*) from events where kind = 'job.downloading'") == [(0,)]
    assert bench.sql("select state, lease_owner from jobs where id = 1") == [("submitted", b.worker)]
    b.finish(
        cb,
        JobState.SUCCEEDED,
        None,
        billed_micro_usd=PRICE,
        output={"path": "/x.mp4", "sha256": "1" * 64, "size_bytes": 1},
    )
    assert bench.sql("select state, billed_micro_usd from jobs where id = 1") == [("succeeded", PRICE)]
    assert bench.sql("select count(*) from outputs") == [(1,)]
    assert bench.sql("select reserved_micro_usd from runs") == [(PRICE,)]  # billed once


def test_a_late_answer_after_the_sweep_is_kept_on_the_attempt(bench):
    a, b = _worker(bench, "a", lease_s=SHORT), _worker(bench, "b")
    run = a.start_run("shared", "b", None)
    ca = _claim(a, run.id)
    a.sending(ca, "0" * 64)  # ... and fal is slow to answer
    time.sleep(SHORT + 0.1)
    b.claim(run.id, None, max_in_flight=10)  # B's sweep: job 1 may have been sent, so it is uncertain
    assert bench.sql("select state from jobs where id = 1") == [("uncertain",)]
    with pytest.raises(LeaseLostError, match="request req-9 is recorded"):
        a.submitted(ca, "req-9", "http://fal/status", "http://fal/result", "http://fal/cancel", "0" * 64)
    assert bench.sql("select state, request_id from attempts where job_id = 1") == [("uncertain", "req-9")]
    assert bench.sql("select state from jobs where id = 1") == [("uncertain",)]


def test_each_recorded_step_renews_the_lease_it_is_fenced_by(bench):
    """submitted and progress fence with the job's own update: the lease must come out renewed,
    as a separate fence renewed it."""
    a = _worker(bench, "a", lease_s=SHORT)
    run = a.start_run("shared", "b", None)
    ca = _claim(a, run.id)
    ca = a.sending(ca, "0" * 64)
    steps = [
        lambda c: a.submitted(c, "req-1", "http://fal/status", "http://fal/result", "http://fal/cancel", "0" * 64),
        lambda c: a.progress(c, JobState.IN_PROGRESS),
        lambda c: a.progress(c, JobState.DOWNLOADING, output_url="http://fal/out.mp4"),
    ]
    for step in steps:
        (before,) = bench.sql("select lease_expires_at from jobs where id = 1")[0]
        time.sleep(0.05)
        ca = step(ca)
        (after, owner) = bench.sql("select lease_expires_at, lease_owner from jobs where id = 1")[0]
        assert owner == a.worker and str(after) > str(before)
    assert bench.sql("select state from jobs where id = 1") == [("downloading",)]
    assert bench.sql("select state, output_url from attempts where job_id = 1") == [
        ("downloading", "http://fal/out.mp4")
    ]


def test_heartbeats_keep_a_slow_job_from_being_taken_over(bench):
    a, b = _worker(bench, "a", lease_s=0.6), _worker(bench, "b")
    run = a.start_run("shared", "b", None)
    ca = _claim(a, run.id)
    a.sending(ca, "0" * 64)
    a.submitted(ca, "req-1", "http://fal/status", "http://fal/result", "http://fal/cancel", "0" * 64)
    for _ in range(4):  # 1.2 s in all: twice the lease
        time.sleep(0.3)
        assert a.heartbeat() == 1
    other = b.claim(run.id, None, max_in_flight=10)
    assert isinstance(other, Claim) and other.job.id == 2  # job 1 is still A's
    a.finish(ca, JobState.SUCCEEDED, None, billed_micro_usd=PRICE)


def test_dead_workers_on_this_machine_are_found_at_once(bench):
    host, ns = "this-host", "4026531836"
    dead = _worker(bench, host, pid=999_001, pid_namespace=ns)
    run = dead.start_run("shared", "b", None)
    _claim(dead, run.id)
    # a restarted container: same hostname, same pid namespace id, same pid 1, new nonce
    old_container = _worker(bench, host, pid=1, pid_namespace=ns)
    _claim(old_container, run.id)
    restarted = _worker(bench, host, pid=1, pid_namespace=ns)
    alive = {1}.__contains__
    assert restarted.expire_dead_local_leases(alive) == 2  # pid 999001 is gone; pid 1 is now itself
    assert restarted.expire_dead_local_leases(alive) == 0  # ended once, not again at every heartbeat
    live = _worker(bench, host, pid=2, pid_namespace=ns)
    assert live.expire_dead_local_leases(lambda pid: True) == 0  # a live pid on this host keeps its leases
    taken = [restarted.claim(run.id, None, max_in_flight=10) for _ in range(2)]
    assert {c.job.id for c in taken} == {1, 2} and all(c.attempt.number == 2 for c in taken)


def test_a_worker_in_another_pid_namespace_is_not_judged_by_pid(bench):
    """Two containers sharing the host's name (host networking) cannot see each other's pids:
    each must wait for the other's lease to run out, never declare it dead."""
    other = _worker(bench, "shared-host", pid=7, pid_namespace="4026532001")
    run = other.start_run("shared", "b", None)
    _claim(other, run.id)
    me = _worker(bench, "shared-host", pid=9, pid_namespace="4026532002")
    assert me.expire_dead_local_leases(lambda pid: False) == 0  # pid 7 is invisible here, not dead
    assert bench.sql("select count(*) from jobs where lease_owner = ?", other.worker) == [(1,)]


def test_claims_lock_rows_with_skip_locked_on_postgresql_only(bench):
    """PostgreSQL gets `FOR UPDATE SKIP LOCKED`; SQLite (one writer at a time) gets plain selects."""
    from sqlalchemy import event

    queue = _worker(bench, "a")
    run = queue.start_run("r", "b", None)
    seen: list[str] = []
    listener = lambda conn, cursor, statement, *rest: seen.append(statement)  # noqa: E731
    event.listen(queue.engine, "before_cursor_execute", listener)
    try:
        _claim(queue, run.id)
    finally:
        event.remove(queue.engine, "before_cursor_execute", listener)
    locking = [s for s in seen if "FOR UPDATE" in s.upper()]
    if queue.engine.dialect.name == "postgresql":
        assert locking and all("SKIP LOCKED" in s.upper() for s in locking)
    else:
        assert locking == []


def test_the_in_flight_cap_and_the_budget_hold_across_many_claiming_workers(bench, tmp_path, media):
    """Twelve workers on six machines claim at once, again and again: never more than the cap
    in flight, never more reserved than the budget."""
    import threading

    planner.enqueue(planner.plan(bench.manifest, bench.settings, load_price_table(), bench.repo), bench.repo)
    (tmp_path / "more").mkdir()
    more = make_bench(
        tmp_path / "more", media, SimpleNamespace(url="http://127.0.0.1:9"), clips=4, db_url=bench.db_url, batch="b"
    )  # the same batch: 8 more jobs
    planner.enqueue(planner.plan(more.manifest, more.settings, load_price_table(), more.repo), more.repo)
    total = bench.sql("select count(*) from jobs")[0][0]
    assert total == 10
    # leases long enough that no claim is swept as stale however slow a loaded machine is
    workers = [_worker(bench, f"m{i % 6}", pid=100 + i, lease_s=600) for i in range(12)]
    run = workers[0].start_run("shared", "b", 7 * PRICE)  # room for 7 of the 10 jobs
    cap, peak, stops = 3, [0], []
    held: list[tuple[JobQueue, Claim]] = []
    lock = threading.Lock()
    start = threading.Barrier(len(workers))

    def work(queue: JobQueue) -> None:
        start.wait()
        for _ in range(30):
            got = queue.claim(run.id, None, max_in_flight=cap)
            with lock:
                if isinstance(got, Claim):
                    held.append((queue, got))
                    peak[0] = max(peak[0], len(held))
                elif got is not None:
                    stops.append(got)
            time.sleep(0.01)
            with lock:  # finish one of this worker's jobs now and then, freeing a slot
                mine = [h for h in held if h[0] is queue]
                if mine and len(held) >= cap:
                    held.remove(mine[0])
                else:
                    mine = []
            for q, c in mine[:1]:
                q.sending(c, "0" * 64)
                q.submitted(c, f"req-{c.job.id}", "s", "r", "c", "0" * 64)
                q.finish(c, JobState.SUCCEEDED, None, billed_micro_usd=PRICE)

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == cap  # reached, never passed
    assert stops and all(s.scope == "run" for s in stops)
    [(reserved, budget)] = bench.sql("select reserved_micro_usd, budget_micro_usd from runs")
    assert reserved == 7 * PRICE == budget
    assert bench.sql("select count(*) from attempts")[0][0] == 7  # every claim was a distinct job
    assert bench.sql("select count(distinct job_id) from attempts")[0][0] == 7


def test_a_job_paid_twice_carries_the_sum_of_its_attempts_bills(bench):
    """finish sets the job's billed total in the job's own UPDATE (a sum over its attempts that
    sees this transaction's attempt): a failed but billed attempt, resubmitted on purpose, then a
    success, bill the job twice."""
    a = _worker(bench, "a")
    run = a.start_run("twice", "b", None)
    first = a.submitted(a.sending(_claim(a, run.id), "0" * 64), "req-1", "s", "r", "c", "0" * 64)
    a.finish(first, JobState.FAILED, "the output was unusable", billed_micro_usd=PRICE)
    assert bench.sql("select state, billed_micro_usd from jobs where id = 1") == [("failed", PRICE)]
    assert bench.repo.requeue_jobs([1], [JobState.FAILED], "on purpose") == 1
    second = a.claim(run.id, None, max_in_flight=10)
    assert isinstance(second, Claim) and (second.job.id, second.attempt.number) == (1, 2)
    second = a.submitted(a.sending(second, "0" * 64), "req-2", "s", "r", "c", "0" * 64)
    a.finish(second, JobState.SUCCEEDED, None, billed_micro_usd=PRICE + 7)
    assert bench.sql("select state, billed_micro_usd from jobs where id = 1") == [("succeeded", 2 * PRICE + 7)]
    assert bench.sql("select number, billed_micro_usd from attempts where job_id = 1 order by number") == [
        (1, PRICE),
        (2, PRICE + 7),
    ]
