"""Use cases: plan a manifest (expand, probe, price), enqueue it, count jobs, list endpoints."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from . import catalog, fal_prices, probe
from .api.client import FalClient
from .config import Secret, Settings
from .db.queue import JobQueue
from .db.repo import EnqueueResult, Repository, StateCount
from .domain import FOLLOW_STATES, Actor, JobSpec, JobState, ProbeResult, format_usd, is_remote
from .errors import (
    BatchRunnerError,
    BudgetExceededError,
    ConfigError,
    InvalidItemsError,
    JobsFailedError,
    ManifestError,
    RemoteError,
    RunInterruptedError,
)
from .manifest import Manifest, load_manifest
from .output import CheckSettings, Delivery
from .pool import CircuitBreaker, Pool, PoolSettings, pid_alive, pid_namespace
from .pricing import PriceTable
from .resolve import LISTING_LAG_S, Resolver, ResolveReport
from .worker import Reporter, Worker, settle_cancel


@dataclass(frozen=True)
class InvalidItem:
    source: str
    reason: str
    origin: str


@dataclass
class Plan:
    """A priced, probed manifest: valid jobs, invalid sources and totals."""

    manifest: Manifest
    price_table: str
    jobs: list[JobSpec]
    invalid: list[InvalidItem]
    probes_run: int = 0
    probes_cached: int = 0
    warnings: list[str] = field(default_factory=list)
    fal_prices: str | None = None  # the synced fal prices jobs reserve against too (the higher wins)

    @property
    def total_micro_usd(self) -> int:
        return sum(j.estimate.micro_usd for j in self.jobs if j.estimate)

    def totals_by(self, what: str) -> dict[str, tuple[int, int]]:
        """(jobs, micro-USD) grouped by "endpoint" or "resolution"."""
        out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for j in self.jobs:
            k = j.endpoint if what == "endpoint" else str(j.params.get("resolution", "n/a"))
            out[k][0] += 1
            out[k][1] += j.estimate.micro_usd if j.estimate else 0
        return {k: (v[0], v[1]) for k, v in sorted(out.items())}

    def to_json(self) -> dict[str, Any]:
        """The stable `plan --json` shape (money as decimal strings)."""
        return {
            "batch": self.manifest.batch,
            "price_table": self.price_table,
            "fal_prices": self.fal_prices,
            "jobs": [_job_json(j) for j in self.jobs],
            "invalid": [{"source": i.source, "reason": i.reason, "origin": i.origin} for i in self.invalid],
            "total_estimated_cost_usd": format_usd(self.total_micro_usd),
            "by_endpoint": {
                k: {"jobs": n, "estimated_cost_usd": format_usd(c)} for k, (n, c) in self.totals_by("endpoint").items()
            },
            "by_resolution": {
                k: {"jobs": n, "estimated_cost_usd": format_usd(c)}
                for k, (n, c) in self.totals_by("resolution").items()
            },
            "budget_usd": format_usd(self.manifest.budget_micro_usd)
            if self.manifest.budget_micro_usd is not None
            else None,
            "unverified_prices": sorted({j.endpoint for j in self.jobs if j.estimate and not j.estimate.verified}),
            "warnings": self.warnings,
        }


@dataclass
class PlanDiff:
    """What tonight's plan adds to the job table: new jobs, changed ones (they bill again),
    unchanged ones (with their state) and jobs the manifest no longer produces."""

    new: list[JobSpec]
    changed: list[tuple[JobSpec, dict[str, Any]]]  # the planned job and the table row it replaces
    unchanged: list[tuple[JobSpec, str]]  # with the job's state in the table
    removed: list[dict[str, Any]]

    @property
    def added_micro_usd(self) -> int:
        return sum(j.estimate.micro_usd for j in self.new if j.estimate) + sum(
            j.estimate.micro_usd for j, _ in self.changed if j.estimate
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "new": [j.key for j in self.new],
            "changed": [
                {
                    "key": j.key,
                    "replaces": old["key"],
                    "output": j.output,
                    "estimated_cost_usd": j.estimate.usd if j.estimate else None,
                }
                for j, old in self.changed
            ],
            "unchanged": [{"key": j.key, "state": state} for j, state in self.unchanged],
            "removed": [{"key": r["key"], "output": r["output_path"], "state": r["state"]} for r in self.removed],
            "added_cost_usd": format_usd(self.added_micro_usd),
        }


def diff_plan(plan_: Plan, repo: Repository) -> PlanDiff:
    """Compare a plan with the job table (by job key, and by output path for changed jobs)."""
    rows = repo.batch_jobs(plan_.manifest.batch)
    by_key = {r["key"]: r for r in rows}
    by_output: dict[str, dict[str, Any]] = {}
    for r in rows:  # the newest job for each output path
        by_output[r["output_path"]] = r
    new, changed, unchanged = [], [], []
    planned_keys, planned_outputs = set(), set()
    for job in plan_.jobs:
        planned_keys.add(job.key)
        planned_outputs.add(job.output)
        if job.key in by_key:
            unchanged.append((job, by_key[job.key]["state"]))
        elif job.output in by_output:
            changed.append((job, by_output[job.output]))
        else:
            new.append(job)
    replaced = {old["key"] for _, old in changed}
    removed = [
        r
        for r in rows
        if r["key"] not in planned_keys and r["key"] not in replaced and r["output_path"] not in planned_outputs
    ]
    return PlanDiff(new, changed, unchanged, removed)


def _job_json(j: JobSpec) -> dict[str, Any]:
    est = j.estimate
    assert est is not None
    return {
        "key": j.key,
        "endpoint": j.endpoint,
        "source": j.source,
        "params": j.params,
        "output": j.output,
        "duration_s": float(j.probe.duration) if j.probe and j.probe.duration is not None else None,
        "billable_units": str(est.billable_units),
        "unit": est.unit,
        "estimated_cost_usd": est.usd,
        "priced_by": est.price_table,
        "price_verified": est.verified,
        "tags": list(j.tags),
    }


def job_key(job: JobSpec, fingerprints: dict[str, str]) -> str:
    """Deterministic identity: endpoint + canonical input + fingerprints of its local media."""
    media = sorted(
        {fingerprints.get(v, v) for v in ([job.source] if job.source else []) + list(job.extra_media.values())}
    )
    canonical = json.dumps(
        {"endpoint": job.endpoint, "input": job.params, "media": media},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def plan(manifest_path: Path, settings: Settings, prices: PriceTable, repo: Repository | None) -> Plan:
    """Expand, probe (through the cache) and price a manifest. Writes no jobs, calls no API."""
    manifest = load_manifest(manifest_path)
    ep = manifest.endpoint
    synced = fal_prices.load_synced(settings.fal_prices_path)  # fal's prices from the last `prices sync`
    sources = sorted({j.source for j in manifest.jobs if j.source and ep.source_kind})
    extras = sorted({p for j in manifest.jobs for p in j.extra_media.values()})

    fingerprints, failed = _fingerprint_all([*sources, *extras], settings)
    cached = repo.cached_probes(fp for fp in fingerprints.values() if probe.cacheable(fp)) if repo else {}
    probes: dict[str, ProbeResult] = {}
    misses = []
    hits = 0
    for src in sources:
        if src in failed:
            continue
        hit = cached.get(fingerprints[src])
        if hit is not None and hit.kind == ep.source_kind:
            probes[src] = hit
            hits += 1
        else:
            misses.append(src)
    if misses:
        probe.require_ffprobe()
        results = probe.run_parallel(
            lambda s: probe.probe(s, ep.source_kind or "video", fingerprints[s], timeout_s=settings.probe_timeout_s),
            misses,
            settings.probe_concurrency,
        )
        fresh = []
        for src, res in zip(misses, results, strict=True):
            if isinstance(res, BatchRunnerError):
                failed[src] = res.message
            else:
                probes[src] = res
                if probe.cacheable(res.fingerprint):
                    fresh.append(res)
        if repo:
            repo.store_probes(fresh)

    jobs: list[JobSpec] = []
    invalid: dict[tuple[str, str], InvalidItem] = {}
    seen_keys: dict[str, JobSpec] = {}
    for job in manifest.jobs:
        bad = next((failed[m] for m in [job.source, *job.extra_media.values()] if m in failed), None)
        if bad:
            invalid.setdefault(
                (job.source or "", bad), InvalidItem(job.source or "", _strip(bad, job.source), job.origin)
            )
            continue
        pr = probes.get(job.source) if job.source else None
        duration = pr.duration if pr else None
        issues = ep.validate(job.params, source_duration=duration)
        if issues:
            reason = f"{issues[0].field}: {issues[0].msg}" + (f" ({issues[0].hint})" if issues[0].hint else "")
            invalid.setdefault((job.source or "", reason), InvalidItem(job.source or "", reason, job.origin))
            continue
        job.probe = pr
        job.fingerprint = fingerprints.get(job.source, "") if job.source else ""
        job.estimate = fal_prices.reserve(prices.estimate(ep, job.params, duration), prices.entry(ep.id), synced)
        job.key = job_key(job, fingerprints)
        if job.key in seen_keys:
            raise ManifestError(
                f"the same job appears twice ({seen_keys[job.key].origin} and {job.origin})",
                file=str(manifest_path),
                field="sources",
                hint="list each source once",
            )
        seen_keys[job.key] = job
        jobs.append(job)
    return Plan(
        manifest,
        prices.label,
        jobs,
        list(invalid.values()),
        probes_run=len(misses),
        probes_cached=hits,
        warnings=list(manifest.warnings),
        fal_prices=synced.label if synced else None,
    )


def _strip(reason: str, source: str | None) -> str:
    if source and reason.startswith(f"{source}: "):
        return reason[len(source) + 2 :]
    return reason


def _fingerprint_all(items: list[str], settings: Settings) -> tuple[dict[str, str], dict[str, str]]:
    urls = [s for s in items if is_remote(s, data_uri=False)]
    client = httpx.Client(timeout=probe.URL_TIMEOUT_S, follow_redirects=True) if urls else None
    try:
        results = probe.run_parallel(lambda s: probe.fingerprint(s, client), items, settings.probe_concurrency)
    finally:
        if client:
            client.close()
    ok, failed = {}, {}
    for item, res in zip(items, results, strict=True):
        if isinstance(res, BatchRunnerError):
            failed[item] = res.message
        else:
            ok[item] = res
    return ok, failed


def enqueue(plan_: Plan, repo: Repository, *, skip_invalid: bool = False) -> EnqueueResult:
    """Write the plan's jobs into the job table; with invalid sources, write nothing unless told."""
    if plan_.invalid and not skip_invalid:
        raise invalid_items_error(plan_)
    m = plan_.manifest
    return repo.enqueue(
        m.batch,
        str(m.path.resolve()),
        m.budget_micro_usd,
        plan_.jobs,
        Actor.current(),
        daily_budget_micro_usd=m.daily_budget_micro_usd,
        warn_at_micro_usd=m.warn_at_micro_usd,
    )


def invalid_items_error(plan_: Plan) -> InvalidItemsError:
    first = plan_.invalid[0]
    more = f" and {len(plan_.invalid) - 1} more" if len(plan_.invalid) > 1 else ""
    return InvalidItemsError(
        f"{len(plan_.invalid)} invalid source(s): {first.origin}: {first.source}: {first.reason}{more}",
        hint="fix them, or pass --skip-invalid to leave them out",
    )


def status(repo: Repository, batch: str | None = None) -> list[StateCount]:
    return repo.state_counts(batch)


def endpoint_prices(prices: PriceTable) -> list[dict[str, Any]]:
    """Every endpoint with its billing rule and its price per resolution and duration."""
    out = []
    for ep in catalog.ENDPOINTS:
        entry = prices.entry(ep.id)
        rows = []
        for res in catalog.RESOLUTIONS if ep.has_resolution else (None,):
            for dur in (ep.durations or (None,)) if ep.billing == catalog.PER_VIDEO else (None,):
                params = ep.with_defaults({k: v for k, v in (("resolution", res), ("duration", dur)) if v})
                est = prices.estimate(ep, params, None if ep.billing == catalog.PER_VIDEO else Decimal(1))
                rows.append(
                    {
                        "resolution": res,
                        "duration": dur,
                        "usd": est.usd,
                        "per": "video" if ep.billing == catalog.PER_VIDEO else "second",
                    }
                )
        out.append(
            {
                "id": ep.id,
                "alias": ep.alias,
                "model": ep.model,
                "family": ep.family,
                "billing": ep.billing,
                "unit": entry.unit,
                "price_table": entry.table,
                "verified": entry.verified,
                "evidence": entry.evidence,
                "source": entry.source,
                "prices": rows,
                "modifiers": [
                    {"when": m.when, "multiplier": str(m.multiplier), "verified": m.verified} for m in entry.modifiers
                ],
                "media_inputs": ep.media_fields,
                "max_source_s": str(ep.max_source_s) if ep.max_source_s else None,
            }
        )
    return out


# --------------------------------------------------------------------------- run and work

FAILED_STATES = (JobState.FAILED, JobState.REJECTED, JobState.UNCERTAIN)


@dataclass
class RunSummary:
    """The end of a run: what happened to the jobs it touched, what it cost, how it ended."""

    run: str
    batches: list[str] | None
    counts: dict[str, int]
    estimated_micro_usd: int
    billed_micro_usd: int
    budget_micro_usd: int | None
    failed: list[dict[str, Any]]
    batch_states: dict[str, int]
    elapsed_s: float
    stopped_by: str | None = None  # "budget", "interrupt", or an error message
    budget_left_micro_usd: int | None = None
    budget_stop_scope: str | None = None  # which budget stopped dispatch: run, batch per day, account per day
    budget_stop_limit_micro_usd: int | None = None
    not_run: int = 0
    error: BatchRunnerError | None = None
    unexpected: list[str] = field(default_factory=list)  # bugs a worker thread hit; each job was let go safely

    def exit_error(self) -> BatchRunnerError | None:
        """The error the command exits with (None: exit 0)."""
        if self.error is not None:
            return self.error
        if self.stopped_by == "interrupt":
            return RunInterruptedError(
                f"interrupted: {self.counts.get('succeeded', 0)} done; in-flight jobs are "
                "recorded and the next run resumes them"
            )
        if self.stopped_by == "budget":
            window = " in the last 24 h" if self.budget_stop_scope != "run" else ""
            left = format_usd(max(0, self.budget_left_micro_usd or 0))
            return BudgetExceededError(
                f"budget stop ({self.budget_stop_scope} budget): ${left} "
                f"of ${format_usd(self.budget_stop_limit_micro_usd or 0)} left{window}, not enough for the next job; "
                f"{self.not_run} job(s) did not run",
                hint="raise the budget (--max-cost, the manifest's budget, BATCH_RUNNER_MAX_USD_PER_DAY) and run again",
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
            "stopped_by": self.stopped_by,
            "budget_stop_scope": self.budget_stop_scope,
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
    budget, daily, warn_at = max_cost_micro_usd, None, settings.warn_at_micro
    if manifest is not None:
        planned = plan(manifest, settings, prices, repo)
        enqueue(planned, repo, skip_invalid=skip_invalid)
        batches = batches or [planned.manifest.batch]
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
    queue = JobQueue(repo.engine, Actor.current(), pool.lease_s, pid_namespace=pid_namespace())
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    # Only a name given on purpose (`work --run NAME`) joins an existing run and its budget.
    name = run_name or f"{'+'.join(batches) if batches else 'all'}-{stamp}-{secrets.token_hex(3)}"
    run = queue.start_run(name, batches[0] if batches and len(batches) == 1 else None, budget, daily, warn_at)
    if settings.max_usd_per_day_micro is not None and pool.account_daily_micro_usd is None:
        pool = dataclasses.replace(pool, account_daily_micro_usd=settings.max_usd_per_day_micro)
    client = FalClient(settings.hosts, key, pool=pool.concurrency, policy=pool.retry_policy, stop=stop)
    queue.expire_dead_local_leases(pid_alive)  # a killed predecessor on this machine: settle its work now
    queue.sweep(batches, run.id)
    _settle_own(queue, settings, key, batches, pool, reporter, stop)
    reporter.event("start", {}, run=name, total=sum(queue.remaining(batches).values()), budget_micro_usd=budget)
    probes_cache: dict[str, ProbeResult | None] = {}

    def source_probe(job: dict[str, Any]) -> ProbeResult | None:
        fp = job.get("source_fingerprint")
        if not fp:
            return None
        if fp not in probes_cache:
            probes_cache[fp] = repo.cached_probes([fp]).get(fp)
        return probes_cache[fp]

    def outage(state: str, message: str) -> None:  # said once per outage, on stderr and in the audit trail
        kind = "fal.unreachable" if state == "open" else "fal.reachable"
        reporter.event("outage" if state == "open" else "resumed", {}, message=message)
        try:
            queue.record_event(kind, message=message)
        except BatchRunnerError as exc:
            reporter.event("warning", {}, message=f"could not record {kind}: {exc.message}")

    breaker = CircuitBreaker(pool.outage_after, pool.outage_pause_s, pool.outage_pause_max_s, outage)
    delivery = Delivery(
        client,
        prices,
        CheckSettings(pool.duration_tolerance_s, pool.probe_timeout_s, strict=pool.strict_verify),
        source_probe,
    )
    worker = Worker(
        queue,
        client,
        prices,
        pool,
        reporter,
        delivery,
        stop,
        breaker,
        synced=fal_prices.load_synced(settings.fal_prices_path),
    )
    try:
        outcome = Pool(queue, worker, run, batches, pool, stop, breaker).run_until_done()
    finally:
        client.close()
    report = queue.run_report(run.id, batches)
    jobs = report["jobs"]
    counts: dict[str, int] = defaultdict(int)
    for j in jobs:
        counts[j["state"]] += 1
    failed = [
        {
            "job": j["id"],
            "key": j["key"][:12],
            "state": j["state"],
            "source": j["source"],
            "output": j["output_path"],
            "error": j["last_error"],
        }
        for j in jobs
        if j["state"] in {s.value for s in FAILED_STATES}
    ]
    stopped_by = None
    error = outcome.fatal
    if error is not None:
        stopped_by = error.message
    elif outcome.interrupted:
        stopped_by = "interrupt"
    elif outcome.budget_stop is not None:
        stopped_by = "budget"
    summary = RunSummary(
        run=name,
        batches=batches,
        counts=dict(counts),
        estimated_micro_usd=sum(j["estimate_micro_usd"] for j in jobs),
        billed_micro_usd=report["billed_micro_usd"],
        budget_micro_usd=report["budget_micro_usd"],
        failed=failed,
        batch_states=report["batch_states"],
        elapsed_s=time.monotonic() - started,
        stopped_by=stopped_by,
        budget_left_micro_usd=(outcome.budget_stop.left_micro_usd if outcome.budget_stop else None),
        budget_stop_scope=(outcome.budget_stop.scope if outcome.budget_stop else None),
        budget_stop_limit_micro_usd=(outcome.budget_stop.budget_micro_usd if outcome.budget_stop else None),
        not_run=report["batch_states"].get(JobState.QUEUED.value, 0),
        error=error,
        unexpected=list(outcome.unexpected),
    )
    status = (
        "interrupted"
        if outcome.interrupted
        else "failed"
        if error is not None
        else "budget_stop"
        if outcome.budget_stop is not None
        else "finished"
    )  # the why is in the summary
    queue.finish_run(run.id, status, summary.to_json())
    return summary


def _settle_own(
    queue: JobQueue,
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
        report = Resolver(queue, admin, listing_lag_s=pool.settle_after_s).run(batches)
    except RemoteError as exc:
        reporter.event("warning", {}, message=f"uncertain jobs not settled: {exc}")
        return
    finally:
        admin.close()
    for s in report.settled:
        if s.outcome != "left":
            reporter.event("warning", {"id": s.job_id}, message=f"job {s.job_id} {s.outcome}: {s.detail}")


def resolve_jobs(
    settings: Settings,
    repo: Repository,
    batches: list[str] | None,
    *,
    listing_lag_s: float = LISTING_LAG_S,
    cancel_ids: list[int] | None = None,
) -> ResolveReport:
    """`batch-runner resolve`: settle uncertain submits and pending bills with fal's records
    (or, with `cancel_ids`, cancel those uncertain jobs at fal)."""
    key = settings.admin_key
    if key is None and not settings.fal_url:
        raise ConfigError(
            "settling uncertain jobs reads fal's request listing and billing events, which need an ADMIN key",
            hint="export FAL_ADMIN_KEY=<an admin key> (or FAL_KEY)",
        )
    client = FalClient(settings.hosts, key or Secret("local"), pool=1)
    try:
        resolver = Resolver(_queue(repo), client, listing_lag_s=listing_lag_s)
        if cancel_ids is not None:
            return resolver.cancel(batches, cancel_ids)
        return resolver.run(batches)
    finally:
        client.close()


# --------------------------------------------------------------------------- manage jobs


def _queue(repo: Repository) -> JobQueue:
    """Queue access for the management commands (they hold no leases)."""
    return JobQueue(repo.engine, Actor.current(), 60, pid_namespace=pid_namespace())


def select_jobs(
    repo: Repository, batches: list[str] | None, states: list[JobState], refs: list[str]
) -> list[dict[str, Any]]:
    queue = _queue(repo)
    if refs:
        found = queue.find_jobs(refs)
        if not found:
            raise ConfigError(f"no job matches {', '.join(refs)}", hint="use a job id or a key prefix from `status`")
        return [j for j in found if not states or j["state"] in {s.value for s in states}]
    return queue.jobs_in(batches, states)


@dataclass(frozen=True)
class RetryItem:
    """What `retry` does with one job: fetch its paid output again (free) or resubmit (may bill)."""

    job: dict[str, Any]
    how: str  # "redeliver" or "resubmit"

    @property
    def may_pay_micro_usd(self) -> int:
        return 0 if self.how == "redeliver" else int(self.job["estimate_micro_usd"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job["id"],
            "key": self.job["key"][:12],
            "state": self.job["state"],
            "how": self.how,
            "output": self.job["output_path"],
            "may_pay_usd": format_usd(self.may_pay_micro_usd),
        }


def retry_plan(repo: Repository, jobs: list[dict[str, Any]], states: list[JobState]) -> list[RetryItem]:
    """What `retry` would queue, and what each may pay again (nothing for a re-download)."""
    return [RetryItem(job, how) for job, how in _queue(repo).retry_plan([j["id"] for j in jobs], states)]


def retry_jobs(repo: Repository, jobs: list[dict[str, Any]], states: list[JobState]) -> int:
    """Queue failed, cancelled or uncertain jobs again: a paid output that never arrived is fetched
    again (free); any other job gets a new attempt and a fresh set of automatic attempts."""
    queue = _queue(repo)
    return queue.requeue_jobs([j["id"] for j in jobs], states, "retry requested")


@dataclass
class CancelResult:
    queued: int = 0  # cancelled here: never sent
    at_fal: int = 0  # cancelled at fal while still queued there: never billed
    running: int = 0  # fal was asked to stop, may still finish and bill: followed to their end
    uncertain: ResolveReport | None = None


def cancel_jobs(
    repo: Repository,
    jobs: list[dict[str, Any]],
    client: FalClient | None,
    admin: FalClient | None = None,
    *,
    listing_lag_s: float = LISTING_LAG_S,
) -> CancelResult:
    """Cancel queued jobs here, in-flight ones through fal's API, and uncertain ones after finding
    their request at fal. Refuses before changing anything when it lacks the key it needs."""
    queue = _queue(repo)
    in_flight = [j for j in jobs if JobState(j["state"]) in FOLLOW_STATES]
    uncertain = [j["id"] for j in jobs if j["state"] == JobState.UNCERTAIN.value]
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
        result.uncertain = Resolver(queue, admin, listing_lag_s=listing_lag_s).cancel(None, uncertain)
    ids = [j["id"] for j in jobs]
    result.queued = queue.cancel_queued(ids, "cancel requested")
    claims = queue.lease_for_cancel([j["id"] for j in in_flight])
    for claim in claims:
        answer = client.cancel(claim.attempt["cancel_url"]) if client else "?"
        if settle_cancel(queue, claim, answer):
            result.at_fal += 1
        else:
            result.running += 1
    return result


def job_history(repo: Repository, ref: str) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    queue = _queue(repo)
    found = queue.find_jobs([ref])
    if not found:
        raise ConfigError(f"no job matches {ref!r}", hint="use a job id or a key prefix from `status --state …`")
    if len(found) > 1:
        raise ConfigError(f"{ref!r} matches {len(found)} jobs", hint="give more of the key")
    attempts, events = queue.history(found[0]["id"])
    return found[0], attempts, events
