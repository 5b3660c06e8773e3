"""Use cases that talk to fal: run and work (enqueue, then the worker pool), resolve uncertain
submits, retry and cancel jobs, and a job's history."""

from __future__ import annotations

import dataclasses
import enum
import secrets
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import fal_prices
from .api.client import FalClient
from .budget import STOP_HINT, BudgetScope, stop_message
from .config import Secret, Settings
from .db.plumbing import pid_namespace
from .db.queue import JobQueue
from .db.repo import Repository
from .db.settle import Settler
from .domain import FOLLOW_STATES, Actor, JobState, ProbeResult, RunEvent, format_usd
from .errors import (
    BatchRunnerError,
    BudgetExceededError,
    ConfigError,
    JobsFailedError,
    RemoteError,
    RunInterruptedError,
)
from .output import CheckSettings, Delivery
from .planner import enqueue, plan
from .pool import CircuitBreaker, Pool, PoolOutcome, PoolSettings, pid_alive
from .pricing import PriceTable
from .records import AttemptRecord, EventRecord, JobRecord
from .resolve import LISTING_LAG_S, Resolver, ResolveReport
from .worker import Reporter, Worker, settle_cancel

# --------------------------------------------------------------------------- run and work

FAILED_STATES = (JobState.FAILED, JobState.REJECTED, JobState.UNCERTAIN)


class StopReason(str, enum.Enum):
    """Why a run stopped before its work was done."""

    BUDGET = "budget"  # a budget had too little left for the next job (the summary says which)
    INTERRUPT = "interrupt"  # Ctrl-C or SIGTERM: in-flight jobs are recorded, the next run resumes them
    ERROR = "error"  # the account, the key or the database failed (the summary's `error`)


@dataclass
class RunSummary:
    """The end of a run: what happened to the jobs it touched, what it cost, how it ended."""

    run: str
    batches: list[str] | None
    counts: dict[str, int]
    estimated_micro_usd: int
    billed_micro_usd: int
    budget_micro_usd: int | None
    failed: list[dict[str, Any]]  # the JSON of each job that did not succeed
    batch_states: dict[str, int]
    elapsed_s: float
    stopped_by: StopReason | None = None
    budget_left_micro_usd: int | None = None
    budget_stop_scope: BudgetScope | None = None  # which budget stopped dispatch
    budget_stop_limit_micro_usd: int | None = None
    not_run: int = 0
    error: BatchRunnerError | None = None
    unexpected: list[str] = field(default_factory=list)  # bugs a worker thread hit; each job was let go safely

    def exit_error(self) -> BatchRunnerError | None:
        """The error the command exits with (None: exit 0)."""
        if self.error is not None:
            return self.error
        if self.stopped_by == StopReason.INTERRUPT:
            return RunInterruptedError(
                f"interrupted: {self.counts.get('succeeded', 0)} done; in-flight jobs are "
                "recorded and the next run resumes them"
            )
        if self.stopped_by == StopReason.BUDGET:
            return BudgetExceededError(
                stop_message(
                    self.budget_stop_scope, self.budget_left_micro_usd, self.budget_stop_limit_micro_usd, self.not_run
                ),
                hint=STOP_HINT,
            )
        if self.failed:
            return JobsFailedError(
                f"{len(self.failed)} job(s) did not succeed (see the summary)",
                hint="`batch-runner retry` queues them again",
            )
        return None

    def to_json(self) -> dict[str, Any]:
        err = self.exit_error()
        return {
            "run": self.run,
            "batches": self.batches,
            "jobs": self.counts,
            "estimated_cost_usd": format_usd(self.estimated_micro_usd),
            "billed_cost_usd": format_usd(self.billed_micro_usd),
            "budget_usd": format_usd(self.budget_micro_usd) if self.budget_micro_usd is not None else None,
            "stopped_by": self.stopped_by.value if self.stopped_by else None,
            "error": self.error.message if self.error else None,
            "budget_stop_scope": self.budget_stop_scope.value if self.budget_stop_scope else None,
            "not_run": self.not_run,
            "elapsed_s": round(self.elapsed_s, 3),
            "failed": self.failed,
            "batch_states": self.batch_states,
            "unexpected_errors": self.unexpected,
            "exit_code": err.exit_code if err else 0,
        }


def run_jobs(
    settings: Settings,
    prices: PriceTable,
    repo: Repository,
    key: Secret,
    *,
    manifest: Path | None,
    batches: list[str] | None,
    pool: PoolSettings,
    max_cost_micro_usd: int | None,
    run_name: str | None,
    reporter: Reporter,
    stop: threading.Event,
    skip_invalid: bool = False,
) -> RunSummary:
    """Enqueue the manifest (if any), then process until nothing is left (or forever for `work`)."""
    started = time.monotonic()
    if manifest is not None:
        planned = plan(manifest, settings, prices, repo)
        enqueue(planned, repo, skip_invalid=skip_invalid)
        batches = batches or [planned.manifest.batch]
    budget, daily, warn_at = _policies(settings, repo, batches, max_cost_micro_usd)
    queue = JobQueue(repo.engine, Actor.current(), pool.lease_s, pid_namespace=pid_namespace())
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    # Only a name given on purpose (`work --run NAME`) joins an existing run and its budget.
    name = run_name or f"{'+'.join(batches) if batches else 'all'}-{stamp}-{secrets.token_hex(3)}"
    run = queue.start_run(name, batches[0] if batches and len(batches) == 1 else None, budget, daily, warn_at)
    if settings.max_usd_per_day_micro is not None and pool.account_daily_micro_usd is None:
        pool = dataclasses.replace(pool, account_daily_micro_usd=settings.max_usd_per_day_micro)
    client = FalClient(settings.hosts, key, pool=pool.concurrency, policy=pool.retry_policy, stop=stop)
    queue.expire_dead_local_leases(pid_alive)  # a killed predecessor on this machine: settle its work now
    queue.close_dead_runs(pid_alive, run.id)  # and its run, which it never finished, ends `interrupted`
    queue.sweep(batches, run.id)
    _settle_own(repo.settler, settings, key, batches, pool, reporter, stop)
    reporter.event(
        RunEvent.START, None, run=name, total=sum(queue.remaining(batches).values()), budget_micro_usd=budget
    )
    worker, breaker = _worker(settings, prices, repo, queue, client, pool, reporter, stop)
    try:
        outcome = Pool(queue, worker, run, batches, pool, stop, breaker).run_until_done()
    finally:
        client.close()
    summary = _summary(queue, run.id, name, batches, outcome, time.monotonic() - started)
    queue.finish_run(run.id, _run_status(outcome), summary.to_json())
    return summary


def _policies(
    settings: Settings, repo: Repository, batches: list[str] | None, max_cost_micro_usd: int | None
) -> tuple[int | None, int | None, int | None]:
    """The run's budget, the batch's daily budget and the warning threshold: --max-cost, else the
    batch's own policies (one batch: its manifest's), else the settings."""
    budget, daily, warn_at = max_cost_micro_usd, None, settings.warn_at_micro
    if batches:
        known = set(repo.batch_names())
        missing = [b for b in batches if b not in known]
        if missing:
            raise ConfigError(f'no batch named "{missing[0]}"', hint="enqueue its manifest first")
        if len(batches) == 1:  # the batch's own policies (from its manifest) apply
            run_b, daily, batch_warn = repo.batch_budgets(batches[0])
            budget = budget if budget is not None else run_b
            warn_at = batch_warn if batch_warn is not None else warn_at
    if budget is None:
        budget = settings.max_usd_per_run_micro
    return budget, daily, warn_at


def _worker(
    settings: Settings,
    prices: PriceTable,
    repo: Repository,
    queue: JobQueue,
    client: FalClient,
    pool: PoolSettings,
    reporter: Reporter,
    stop: threading.Event,
) -> tuple[Worker, CircuitBreaker]:
    """The per-job worker with its delivery, and the circuit breaker the pool shares with it."""
    probes_cache: dict[str, ProbeResult | None] = {}

    def source_probe(job: JobRecord) -> ProbeResult | None:
        fp = job.source_fingerprint
        if not fp:
            return None
        if fp not in probes_cache:
            probes_cache[fp] = repo.cached_probes([fp]).get(fp)
        return probes_cache[fp]

    def outage(state: str, message: str) -> None:  # said once per outage, on stderr and in the audit trail
        kind = "fal.unreachable" if state == "open" else "fal.reachable"
        reporter.event(RunEvent.OUTAGE if state == "open" else RunEvent.RESUMED, None, message=message)
        try:
            queue.record_event(kind, message=message)
        except BatchRunnerError as exc:
            reporter.event(RunEvent.WARNING, None, message=f"could not record {kind}: {exc.message}")

    breaker = CircuitBreaker(pool.outage_after, pool.outage_pause_s, pool.outage_pause_max_s, outage)
    check = CheckSettings(pool.duration_tolerance_s, strict=pool.strict_verify)
    delivery = Delivery(client, prices, check, source_probe)
    synced = fal_prices.load_synced(settings.fal_prices_path)
    worker = Worker(queue, client, prices, pool, reporter, delivery, stop, breaker, synced=synced)
    return worker, breaker


def _summary(
    queue: JobQueue, run_id: int, name: str, batches: list[str] | None, outcome: PoolOutcome, elapsed_s: float
) -> RunSummary:
    """What the run did to the jobs it touched, what it cost and how it ended."""
    report = queue.run_report(run_id, batches)
    jobs = report.jobs
    counts: dict[str, int] = defaultdict(int)
    for j in jobs:
        counts[j.state.value] += 1
    failed = [
        {
            "job": j.id,
            "key": j.key[:12],
            "state": j.state.value,
            "source": j.source,
            "output": j.output_path,
            "error": j.last_error,
        }
        for j in jobs
        if j.state in FAILED_STATES
    ]
    error = outcome.fatal
    stopped_by = (
        StopReason.ERROR
        if error is not None
        else StopReason.INTERRUPT
        if outcome.interrupted
        else StopReason.BUDGET
        if outcome.budget_stop is not None
        else None
    )
    stop = outcome.budget_stop
    return RunSummary(
        run=name,
        batches=batches,
        counts=dict(counts),
        estimated_micro_usd=sum(j.estimate_micro_usd for j in jobs),
        billed_micro_usd=report.billed_micro_usd,
        budget_micro_usd=report.budget_micro_usd,
        failed=failed,
        batch_states=report.batch_states,
        elapsed_s=elapsed_s,
        stopped_by=stopped_by,
        budget_left_micro_usd=stop.left_micro_usd if stop else None,
        budget_stop_scope=stop.scope if stop else None,
        budget_stop_limit_micro_usd=stop.budget_micro_usd if stop else None,
        not_run=report.batch_states.get(JobState.QUEUED.value, 0),
        error=error,
        unexpected=list(outcome.unexpected),
    )


def _run_status(outcome: PoolOutcome) -> str:
    """The run's recorded status (the why is in its summary)."""
    if outcome.interrupted:
        return "interrupted"
    if outcome.fatal is not None:
        return "failed"
    return "budget_stop" if outcome.budget_stop is not None else "finished"


def _settle_own(
    settler: Settler,
    settings: Settings,
    key: Secret,
    batches: list[str] | None,
    pool: PoolSettings,
    reporter: Reporter,
    stop: threading.Event,
) -> None:
    """Before a run: settle its batches' uncertain submits and pending bills by asking fal.
    Without an admin key they stay as they are, and the run says so once."""
    admin = FalClient(settings.hosts, settings.fal_admin_key or key, pool=1, policy=pool.retry_policy, stop=stop)
    try:
        report = Resolver(settler, admin, listing_lag_s=pool.settle_after_s).run(batches)
    except RemoteError as exc:
        reporter.event(RunEvent.WARNING, None, message=f"uncertain jobs not settled: {exc}")
        return
    finally:
        admin.close()
    for s in report.settled:
        if s.outcome != "left":
            reporter.event(RunEvent.WARNING, None, message=f"job {s.job_id} {s.outcome}: {s.detail}")


# --------------------------------------------------------------------------- manage jobs


def _bounded(text: str, limit: int = 80) -> str:
    """A user's value as quoted in a message: at most `limit` characters."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def select_jobs(
    repo: Repository, batches: list[str] | None, states: list[JobState], refs: list[str]
) -> list[JobRecord]:
    if refs:
        found = repo.find_jobs(refs)
        if not found:
            raise ConfigError(
                f"no job matches {_bounded(', '.join(refs))}", hint="use a job id or a key prefix from `status`"
            )
        return [j for j in found if not states or j.state in states]
    missing = [b for b in batches or () if b not in set(repo.batch_names())]
    if missing:  # a typo must not look like a batch with nothing to do
        raise ConfigError(f'no batch named "{_bounded(missing[0])}"', hint="run `batch-runner status` to list batches")
    return repo.jobs_in(batches, states)


@dataclass(frozen=True)
class RetryItem:
    """What `retry` does with one job: fetch its paid output again (free) or resubmit (may bill)."""

    job: JobRecord
    how: str  # "redeliver" or "resubmit"

    @property
    def may_pay_micro_usd(self) -> int:
        return 0 if self.how == "redeliver" else self.job.estimate_micro_usd

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job.id,
            "key": self.job.key[:12],
            "state": self.job.state.value,
            "how": self.how,
            "output": self.job.output_path,
            "may_pay_usd": format_usd(self.may_pay_micro_usd),
        }


def retry_plan(repo: Repository, jobs: list[JobRecord], states: list[JobState]) -> list[RetryItem]:
    """What `retry` would queue, and what each may pay again (nothing for a re-download)."""
    return [RetryItem(job, how) for job, how in repo.retry_plan([j.id for j in jobs], states)]


def retry_jobs(repo: Repository, jobs: list[JobRecord], states: list[JobState]) -> int:
    """Queue failed, cancelled or uncertain jobs again: a paid output that never arrived is fetched
    again (free); any other job gets a new attempt and a fresh set of automatic attempts."""
    return repo.requeue_jobs([j.id for j in jobs], states, "retry requested")


@dataclass(frozen=True)
class RetryResult:
    """What `retry` queued (or, with --dry-run, would queue) and what it may pay again."""

    plan: list[RetryItem]
    queued: int
    dry_run: bool

    @property
    def may_pay_micro_usd(self) -> int:
        return sum(item.may_pay_micro_usd for item in self.plan)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "queued": self.queued,
            "may_pay_usd": format_usd(self.may_pay_micro_usd),
            "jobs": [item.as_dict() for item in self.plan],
        }


@dataclass
class CancelResult:
    queued: int = 0  # cancelled here: never sent
    at_fal: int = 0  # cancelled at fal while still queued there: never billed
    running: int = 0  # fal was asked to stop, may still finish and bill: followed to their end
    uncertain: ResolveReport | None = None

    def to_json(self) -> dict[str, Any]:
        """`cancel --json`: the counts, and what became of each uncertain job (null: there were none)."""
        return {
            "cancelled_queued": self.queued,
            "cancelled_at_fal": self.at_fal,
            "stop_requested": self.running,
            "uncertain": self.uncertain.as_dict() if self.uncertain is not None else None,
        }


def cancel_with_fal(settings: Settings, repo: Repository, jobs: list[JobRecord]) -> CancelResult:
    """`batch-runner cancel`: with FAL_KEY for in-flight jobs and the admin key for uncertain ones,
    when they are set (or the emulator); `cancel_jobs` refuses what needs a key that is missing."""
    client = (
        FalClient(settings.hosts, settings.fal_key or Secret("local")) if settings.fal_key or settings.fal_url else None
    )
    admin = (
        FalClient(settings.hosts, settings.admin_key or Secret("local"))
        if settings.admin_key or settings.fal_url
        else None
    )
    try:
        return cancel_jobs(repo, jobs, client, admin)
    finally:
        for c in (client, admin):
            if c is not None:
                c.close()


def cancel_jobs(
    repo: Repository,
    jobs: list[JobRecord],
    client: FalClient | None,
    admin: FalClient | None = None,
    *,
    listing_lag_s: float = LISTING_LAG_S,
) -> CancelResult:
    """Cancel queued jobs here, in-flight ones through fal's API, and uncertain ones after finding
    their request at fal. Refuses before changing anything when it lacks the key it needs."""
    in_flight = [j for j in jobs if j.state in FOLLOW_STATES]
    uncertain = [j.id for j in jobs if j.state == JobState.UNCERTAIN]
    if in_flight and client is None:
        raise ConfigError(
            f"{len(in_flight)} job(s) are in flight at fal and need the API to cancel; nothing was cancelled",
            hint="set FAL_KEY (or --fal-url for an emulator)",
        )
    if uncertain and admin is None:
        raise ConfigError(
            f"{len(uncertain)} uncertain job(s) must be looked up at fal before they can be "
            "cancelled; nothing was cancelled",
            hint="set FAL_ADMIN_KEY (an ADMIN key)",
        )
    result = CancelResult()
    if uncertain and admin is not None:
        result.uncertain = Resolver(repo.settler, admin, listing_lag_s=listing_lag_s).cancel(None, uncertain)
    result.queued = repo.cancel_queued([j.id for j in jobs], "cancel requested")
    for claim in repo.lease_for_cancel([j.id for j in in_flight]):
        answer = client.cancel(claim.attempt.cancel_url) if client and claim.attempt.cancel_url else "?"
        if settle_cancel(repo, claim, answer):
            result.at_fal += 1
        else:
            result.running += 1
    return result


@dataclass(frozen=True)
class JobHistory:
    """`show`: a job, its attempts and its whole audit trail, oldest first."""

    job: JobRecord
    attempts: list[AttemptRecord]
    events: list[EventRecord]

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job.to_json(),
            "attempts": [a.to_json() for a in self.attempts],
            "events": [e.to_json() for e in self.events],
        }


def job_history(repo: Repository, ref: str) -> JobHistory:
    found = repo.find_jobs([ref])
    if not found:
        raise ConfigError(
            f"no job matches {_bounded(ref)!r}", hint="use a job id or a key prefix from `status --state …`"
        )
    if len(found) > 1:
        raise ConfigError(f"{_bounded(ref)!r} matches {len(found)} jobs", hint="give more of the key")
    attempts, events = repo.history(found[0].id)
    return JobHistory(found[0], attempts, events)
