"""The worker pool, in stages: N slot threads claiming jobs and holding fal's slots until fal's
outcome is known, a delivery stage for the outputs, a look-ahead for uploads, a heartbeat for
the leases, idle backoff, and a circuit breaker that pauses the pool while fal is down.

The database decides who does what (claims with leases, one claim at a time through the dispatch
lock), so any number of processes on any number of machines can run pools against one database.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TypeVar

from .api.transport import RetryPolicy
from .budget import BudgetStop
from .config.keys import STORE_URL_LIFETIME_S
from .db.queue import JobQueue
from .db.transition import Claim, ClaimKind
from .domain import JobState, RunEvent
from .errors import BatchRunnerError
from .logs import get_logger, log_context
from .records import JobRecord, RunRecord
from .stages import Lookahead, Precedence, Signal, Stage
from .worker import Handoff, Worker

log = get_logger("pool")
_R = TypeVar("_R")

DELIVERY_THREADS_MAX = 8  # delivery threads unless PoolSettings.delivery_threads says otherwise
UNEXPECTED_ERRORS_MAX = 5  # unexpected errors (bugs) in one process before the run stops itself
REFILL_FIRST_S = 0.05  # the longest a delivery waits for slot threads refilling (a round's refills: ~30 ms)


@dataclass(frozen=True)
class PoolSettings:
    concurrency: int = 2  # threads, and the in-flight cap unless max_in_flight says otherwise
    max_in_flight: int | None = None
    lease_s: float = 60.0
    max_attempts: int = 3  # automatic attempts per job for retryable failures (each `retry` grants more)
    retry_delay_s: float = 20.0  # first wait before a new attempt; doubles each time
    follow_later_s: float = 30.0  # a job whose status or result could not be read waits this long
    poll_min_s: float = 1.0  # adaptive polling when the status stream is unavailable
    poll_max_s: float = 15.0
    idle_s: float = 0.5  # how often an idle worker looks for work at first...
    idle_max_s: float = 5.0  # ...doubling while it finds none (many idle workers, one dispatch lock)
    watch_s: float = 0.25  # a burst run's one watching idle thread looks this often (the batch may end elsewhere)
    duration_tolerance_s: Decimal = Decimal("0.25")
    strict_verify: bool = False  # an output that differs from the output convention fails its job
    cancel_on_exit: bool = False
    account_daily_micro_usd: int | None = None  # BATCH_RUNNER_MAX_USD_PER_DAY: every batch, rolling 24 h
    burst: bool = True  # exit when nothing is left (run); False keeps waiting (work)
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    outage_after: int = 2  # calls in a row failing for everyone before the pool pauses
    outage_pause_s: float = 5.0  # the first pause; doubles while fal stays unreachable...
    outage_pause_max_s: float = 300.0  # ...up to this
    settle_after_s: float = 900.0  # an uncertain submit fal's list does not show after this was never created
    delivery_threads: int | None = None  # threads downloading and verifying outputs (None: see delivery_count)
    lookahead: bool = True  # upload the next queued jobs' media before their claims
    store_url_lifetime_s: int = STORE_URL_LIFETIME_S  # presigned object URLs handed to fal outlive the queue wait

    @property
    def in_flight_cap(self) -> int:
        return self.max_in_flight or self.concurrency

    @property
    def delivery_count(self) -> int:
        """Outputs take seconds to fetch and check where fal takes minutes to make them: a few
        threads keep up with many slots (and keep the database pool's size about the slots')."""
        return max(1, self.delivery_threads or min(self.concurrency, DELIVERY_THREADS_MAX))

    @property
    def lookahead_depth(self) -> int:
        """Queued jobs whose uploads are readied before their claims: the next two slots' worth."""
        return 2 * self.in_flight_cap

    @property
    def delivery_capacity(self) -> int:
        """Outputs waiting for a delivery thread; beyond this, slot threads wait (back-pressure)."""
        return 2 * self.in_flight_cap


class CircuitBreaker:
    """Closed: work flows. After `threshold` outage failures in a row (any thread), open: no
    thread takes new work; after a pause one probe goes through (half-open). Its success closes
    the breaker; its failure reopens it with the pause doubled, up to the cap."""

    def __init__(
        self,
        threshold: int,
        pause_s: float,
        pause_max_s: float,
        on_change: Callable[[str, str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold, self.pause_s, self.pause_max_s = max(1, threshold), pause_s, pause_max_s
        self.on_change, self.clock = on_change, clock
        self.state = "closed"
        self._failures = 0
        self._pause = pause_s
        self._reopen_at = 0.0
        self._prober: int | None = None
        self._opened_at = 0.0
        self._cond = threading.Condition()

    def failure(self, reason: str) -> None:
        with self._cond:
            self._failures += 1
            if self.state == "half_open":
                self._pause = min(self._pause * 2, self.pause_max_s)
                self._open()
            elif self.state == "closed" and self._failures >= self.threshold:
                self._pause, self._opened_at = self.pause_s, self.clock()
                self._open()
                self.on_change("open", f"{reason[:200]}; new work pauses, retried in {self._pause:g} s")

    def _open(self) -> None:
        self.state, self._prober = "open", None
        self._reopen_at = self.clock() + self._pause
        self._cond.notify_all()

    def success(self) -> None:
        with self._cond:
            self._failures = 0
            if self.state != "closed":
                self.state, self._prober = "closed", None
                self._cond.notify_all()
                self.on_change("closed", f"fal answers again after {self.clock() - self._opened_at:.0f} s")

    def acquire(self, stop: threading.Event) -> bool:
        """Wait until this thread may take work: the breaker is closed, or this thread is the
        one probe. False when stopping."""
        me = threading.get_ident()
        with self._cond:
            while not stop.is_set():
                if self.state == "closed" or (self.state == "half_open" and self._prober == me):
                    return True
                if self.state == "open" and self.clock() >= self._reopen_at:
                    self.state, self._prober = "half_open", me
                    return True
                wait = self._reopen_at - self.clock() if self.state == "open" else 0.5
                self._cond.wait(min(max(wait, 0.01), 0.5))
        return False

    def done(self) -> None:
        """The probe ended without telling success or failure (no job, or no call to fal): let
        another thread probe now."""
        with self._cond:
            if self.state == "half_open" and self._prober == threading.get_ident():
                self.state, self._prober, self._reopen_at = "open", None, self.clock()
                self._cond.notify_all()


@dataclass
class PoolOutcome:
    budget_stop: BudgetStop | None = None
    fatal: BatchRunnerError | None = None
    interrupted: bool = False
    unexpected: list[str] = field(default_factory=list)  # bugs caught in worker threads


class Pool:
    """Slot threads that claim jobs and hold each one's fal slot until fal's outcome is known; a
    delivery stage (its own threads, a bounded queue) that downloads, verifies and records
    outputs without a slot; a look-ahead that uploads the next queued jobs' media before their
    claims; and a heartbeat for the leases of all of them."""

    def __init__(
        self,
        queue: JobQueue,
        worker: Worker,
        run: RunRecord,
        batches: list[str] | None,
        settings: PoolSettings,
        stop: threading.Event,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.queue, self.worker, self.run, self.batches = queue, worker, run, batches
        self.settings, self.stop = settings, stop
        self.breaker = breaker
        self.outcome = PoolOutcome()
        self._draining = threading.Event()  # budget stop: follow what is in flight, submit nothing new
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._released = Signal()  # a fal slot freed, or a job ended: waiting slot threads look again
        # A slot thread from claiming to fal's answer to its submit goes before deliveries: a freed
        # fal slot is refilled at once, the output it made is fetched a few milliseconds later
        # (at most REFILL_FIRST_S). For rounds of several slots freeing together; a lone slot's
        # deliveries are not held back (they fell behind it, and a stop then left them undelivered).
        self._refills = Precedence(REFILL_FIRST_S if settings.concurrency > 1 else 0.0)
        self._finished = threading.Event()  # burst mode: one thread found nothing left; the idle others end too
        self._watcher: int | None = None  # the one idle slot thread that looks again at the short interval
        self._ready: deque[Claim] = deque()  # claimed by one thread's transaction for the others
        self._busy = 0  # slot threads holding a claim
        self._claim_lock = threading.Lock()  # one claiming transaction at a time in this process
        self.delivery: Stage[Handoff] = Stage(
            "delivery", settings.delivery_count, settings.delivery_capacity, self._deliver, stop
        )
        self.lookahead: Lookahead[JobRecord] = Lookahead(
            peek=lambda: queue.next_queued(batches, settings.lookahead_depth),
            key=lambda job: job.id,
            ready=self._prefetch,
            active=self._may_look_ahead,
            stop=stop,
            every_s=settings.idle_max_s,
            every_n=settings.in_flight_cap,  # half the depth: a cap's worth stays readied ahead
        )

    def run_until_done(self) -> PoolOutcome:
        self.queue.expire_dead_local_leases(pid_alive)
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        self.delivery.start()
        if self.settings.lookahead:
            self.lookahead.start()
        slots = [
            threading.Thread(target=self._loop, name=f"worker-{i}", daemon=True)
            for i in range(self.settings.concurrency)
        ]
        for t in slots:
            t.start()
        for t in slots:
            while t.is_alive():
                t.join(timeout=0.5)
        self._release_ready()  # claims taken for threads that stopped first
        self.delivery.close()  # the slot threads are done: deliver what waits, then end
        self.delivery.join()
        for handoff in self.delivery.leftovers():  # stopping: never started, left resumable
            self._release(handoff)
        if self.settings.lookahead:
            self.lookahead.close()
        self._done.set()
        beat.join(timeout=5)
        self.outcome.interrupted = self.stop.is_set() and self.outcome.fatal is None
        return self.outcome

    def _heartbeat(self) -> None:
        """Renew this worker's leases (claims in flight and in delivery alike), and end those of
        dead workers on this machine (workers on other machines are taken over when their leases
        run out)."""
        while not self._done.wait(self.settings.lease_s / 3):
            try:
                self.queue.heartbeat()
                self.queue.expire_dead_local_leases(pid_alive)
            except BatchRunnerError as exc:
                log.warning("heartbeat failed: %s", exc)

    # ------------------------------------------------------------------ slot stage

    def _loop(self) -> None:
        try:
            self._slot()
        finally:
            self._refills.end()

    def _slot(self) -> None:
        idle = 0  # claims in a row that found nothing
        while not self.stop.is_set() and self.outcome.fatal is None and not self._finished.is_set():
            if self.breaker is not None and not self.breaker.acquire(self.stop):
                return
            self._refills.begin()  # until this slot's next submit has fal's answer, or nothing is claimed
            seen = self._released.count  # read before the claim: a slot freed during it is not missed
            try:
                claim = self._next_claim()
            except BatchRunnerError as exc:
                self._fail(exc)
                return
            if isinstance(claim, BudgetStop):
                self._refills.end()  # nothing to refill with: claims again, follow-only
                continue
            if claim is None or claim.kind != ClaimKind.SUBMIT:
                self._refills.end()
            if claim is None:
                if self.breaker is not None:
                    self.breaker.done()
                if not self._wait_for_work(idle, seen):
                    return
                idle += 1
                continue
            idle = 0
            self._unwatch()
            if claim.kind == ClaimKind.SUBMIT:
                self.lookahead.poke()  # the queue's head moved: ready the next uploads
            if claim.warning:
                self.worker.reporter.event(RunEvent.WARNING, claim.job, message=claim.warning, budget_warning=True)
            with self._log_context(claim):
                if not self._process(claim):
                    return

    def _next_claim(self) -> Claim | BudgetStop | None:
        """A claim another thread took for this one, else one claiming transaction for every slot
        thread free now (one lock and one commit for several jobs): this thread takes the first,
        the rest wait in `_ready` for the free threads, which are woken. This process's threads
        claim one at a time (the dispatch lock serialises claims anyway), so what one thread
        claims for the others is never claimed twice over. Marks this thread busy."""
        with self._claim_lock:
            with self._lock:
                if self._ready:
                    self._busy += 1
                    return self._ready.popleft()
                want = max(1, self.settings.concurrency - self._busy)
            if self.breaker is not None and self.breaker.state != "closed":
                want = 1  # one probe while fal may be down: nothing claimed to sit waiting
            got = self.queue.claim_many(
                self.run.id,
                self.batches,
                self.settings.in_flight_cap,
                want,
                follow_only=self._draining.is_set(),
                account_daily_micro_usd=self.settings.account_daily_micro_usd,
            )
            if got.stop is not None:
                with self._lock:
                    self.outcome.budget_stop = self.outcome.budget_stop or got.stop
                self._draining.set()
            if not got.claims:
                return got.stop  # a stop: this thread claims again at once, follow-only
            with self._lock:
                self._busy += 1
                self._ready.extend(got.claims[1:])
        if len(got.claims) > 1:
            self._released.fire()  # threads waiting for work take the rest
        return got.claims[0]

    def _release_ready(self) -> None:
        """Stopping: claims taken for threads that never started them go back as they were (a
        submit claim never sent returns to the queue; a live request stays to be followed)."""
        with self._lock:
            left = list(self._ready)
            self._ready.clear()
        for claim in left:
            try:
                self.queue.release(claim, unsent=claim.kind == ClaimKind.SUBMIT)
            except BatchRunnerError as exc:  # its lease runs out by itself, and the sweep requeues it
                log.warning("job %s: could not let it go: %s", claim.job.id, exc)

    def _process(self, claim: Claim) -> bool:
        """Take one claim until fal's outcome is known and hand its output to the delivery stage
        (waiting while that is full); False when this thread must stop."""
        try:
            go_on, handoff = self._guarded(claim, lambda: self.worker.process(claim, self._refills.end))
        finally:
            with self._lock:
                self._busy -= 1
            if self.breaker is not None:
                self.breaker.done()
            self._released.fire()  # its fal slot is free: this or a waiting thread claims the next job
        if handoff is not None and not self.delivery.put(handoff):
            self._release(handoff)  # stopping: DOWNLOADING with fal's output URL, taken up again later
        return go_on

    def _wait_for_work(self, idle: int, seen: int) -> bool:
        """False when this thread should exit (burst mode and nothing left for it). Otherwise wait
        until a slot frees or a job ends (`seen` is the release count before the claim that found
        nothing), or a while: longer the longer nothing was found, so idle workers do not hammer
        the dispatch lock. In burst mode one idle thread, the watcher, looks every `watch_s`: the
        batch's last jobs may end in another process, which wakes nothing here, and a run that
        waited out the others' backoff would exit up to `idle_max_s` late."""
        if self._finished.is_set():
            return False
        remaining = self.queue.remaining(self.batches)
        active = sum(n for s, n in remaining.items() if s != JobState.QUEUED.value)
        queued = remaining.get(JobState.QUEUED.value, 0)
        if self.settings.burst and active == 0 and (queued == 0 or self._draining.is_set()):
            self._finished.set()
            self._released.fire()  # the other idle threads end now, not at their next look
            return False
        wait = min(self.settings.idle_s * 2 ** min(idle, 10), max(self.settings.idle_s, self.settings.idle_max_s))
        shortest = self.settings.idle_s
        if self.settings.burst and (queued == 0 or self._draining.is_set()) and self._watch():
            # Nothing left to submit, and the batch's last jobs may be another process's: nothing
            # here is woken when they end, so one idle thread keeps looking at the short interval
            # (its claims wake the others). Before the tail, idle threads back off as they did.
            wait = shortest = self.settings.watch_s
        due = self.queue.next_retry_at(self.batches)
        if due is not None:
            until_due = (due - datetime.now(UTC)).total_seconds()
            wait = max(shortest, min(until_due, wait if active else 30.0))
        self._released.wait(seen, wait, self.stop)
        return True

    def _watch(self) -> bool:
        """True for the watcher: this thread if it is, or if no idle thread is yet."""
        me = threading.get_ident()
        with self._lock:
            if self._watcher is None:
                self._watcher = me
            return self._watcher == me

    def _unwatch(self) -> None:
        """This thread has work: another idle thread may watch."""
        me = threading.get_ident()
        with self._lock:
            if self._watcher == me:
                self._watcher = None

    # ------------------------------------------------------------------ delivery stage

    def _deliver(self, handoff: Handoff) -> bool:
        """The delivery stage's work on one output; False when this thread must stop."""
        self._refills.defer(self.stop)
        if self.breaker is not None and not self.breaker.acquire(self.stop):
            self._release(handoff)
            return False
        try:
            with self._log_context(handoff.claim):
                go_on, _ = self._guarded(handoff.claim, lambda: self.worker.deliver(handoff))
        finally:
            if self.breaker is not None:
                self.breaker.done()
            self._released.fire()  # a job ended: the batch may be done
        return go_on

    def _log_context(self, claim: Claim) -> AbstractContextManager[None]:
        """Every log line about this job says which (logs.log_context), in either stage."""
        job = claim.job
        return log_context(job=job.id, batch=job.batch_id, run=self.run.name, request_id=claim.attempt.request_id)

    def _release(self, handoff: Handoff) -> None:
        """Let a handed-off job go undelivered: it stays DOWNLOADING with fal's output URL."""
        try:
            self.queue.release(handoff.claim)
        except BatchRunnerError as exc:  # its lease runs out by itself
            log.warning("job %s: could not let it go: %s", handoff.claim.job.id, exc)

    # ------------------------------------------------------------------ look-ahead

    def _may_look_ahead(self) -> bool:
        """Not while draining (nothing new is submitted) or while fal is unreachable."""
        return not self._draining.is_set() and (self.breaker is None or self.breaker.state == "closed")

    def _prefetch(self, job: JobRecord) -> None:
        try:
            self.worker.prefetch(job)
        except (BatchRunnerError, OSError) as exc:  # its claim meets the same trouble and records it
            log.debug("job %s: upload ahead of the claim failed: %s", job.id, exc)

    # ------------------------------------------------------------------ errors

    def _guarded(self, claim: Claim, step: Callable[[], _R]) -> tuple[bool, _R | None]:
        """Run one step of a claimed job under the pool's rules: (go on?, the step's result)."""
        try:
            return True, step()
        except BatchRunnerError as exc:  # a refused key, a locked account, a database failing midway
            self._fail(exc)  # (the job stays resumable)
            return False, None
        except Exception as exc:  # a bug: the job is let go, the run says so and goes on
            log.exception("job %s: unexpected error", claim.job.id)
            return self._unexpected(claim, exc), None

    def _unexpected(self, claim: Claim, exc: Exception) -> bool:
        reason = f"unexpected error: {type(exc).__name__}: {str(exc)[:200]}"
        self.worker.reporter.event(RunEvent.ERROR, claim.job, error=reason)
        try:
            self.queue.abandon(claim, reason, delay_s=self.settings.follow_later_s)
        except BatchRunnerError as db_exc:
            self._fail(db_exc)
            return False
        with self._lock:
            self.outcome.unexpected.append(f"job {claim.job.id}: {reason}")
            if len(self.outcome.unexpected) < UNEXPECTED_ERRORS_MAX:
                return True
        self._fail(
            BatchRunnerError(
                f"{len(self.outcome.unexpected)} unexpected errors; stopped (the jobs are kept as they were)",
                hint="see the log above, and report it as a bug",
            )
        )
        return False

    def _fail(self, exc: BatchRunnerError) -> None:
        with self._lock:
            if self.outcome.fatal is None:
                self.outcome.fatal = exc
        self.stop.set()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["CircuitBreaker", "Pool", "PoolOutcome", "PoolSettings", "pid_alive"]
