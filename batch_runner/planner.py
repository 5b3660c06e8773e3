"""Use cases before anything is sent: plan a manifest (expand, probe, price), compare a plan with
the job table, enqueue it idempotently, count jobs, list endpoints and their prices."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from . import catalog, fal_prices, probe
from .config import Settings
from .db.repo import EnqueueResult, Repository, StateCount
from .domain import Actor, Estimate, JobSpec, JobState, ProbeResult, format_usd, is_remote
from .errors import (
    BatchRunnerError,
    ConfigError,
    InvalidItemsError,
    ManifestError,
    shorten,
)
from .manifest import Manifest, load_manifest
from .pricing import PriceTable
from .records import JobOutline


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

    def to_json(self, *, lazy: bool = False) -> dict[str, Any]:
        """The stable `plan --json` shape (money as decimal strings). `lazy`: the job list is an
        iterator, for a writer that encodes it item by item (`cli.planning.emit_json_streamed`)."""
        usd: dict[int, str] = {}  # a batch has a few distinct prices: each formatted once
        jobs = (_job_json(j, usd) for j in self.jobs)
        return {
            "batch": self.manifest.batch,
            "price_table": self.price_table,
            "fal_prices": self.fal_prices,
            "jobs": jobs if lazy else list(jobs),
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
    changed: list[tuple[JobSpec, JobOutline]]  # the planned job and the stored job it replaces
    unchanged: list[tuple[JobSpec, JobState]]  # with the job's state in the table
    removed: list[JobOutline]

    @property
    def added_micro_usd(self) -> int:
        return sum(j.estimate.micro_usd for j in self.new if j.estimate) + sum(
            j.estimate.micro_usd for j, _ in self.changed if j.estimate
        )

    def to_json(self, *, lazy: bool = False) -> dict[str, Any]:
        """`plan --diff --json`'s "diff"; `lazy` as for `Plan.to_json` (the unchanged jobs)."""
        unchanged = ({"key": j.key, "state": state.value} for j, state in self.unchanged)
        return {
            "new": [j.key for j in self.new],
            "changed": [
                {
                    "key": j.key,
                    "replaces": old.key,
                    "output": j.output,
                    "estimated_cost_usd": j.estimate.usd if j.estimate else None,
                }
                for j, old in self.changed
            ],
            "unchanged": unchanged if lazy else list(unchanged),
            "removed": [{"key": r.key, "output": r.output_path, "state": r.state.value} for r in self.removed],
            "added_cost_usd": format_usd(self.added_micro_usd),
        }


def diff_plan(plan_: Plan, repo: Repository) -> PlanDiff:
    """Compare a plan with the job table of its batch."""
    return diff_jobs(plan_.jobs, repo.batch_jobs(plan_.manifest.batch))


def diff_jobs(planned: Sequence[JobSpec], stored: Sequence[JobOutline]) -> PlanDiff:
    """Compare planned jobs with the stored ones (in the order they were stored): the same key is
    unchanged; the same output path under another key is changed (the newest stored job for that
    path is the one replaced); a stored job neither planned nor replaced is removed."""
    by_key = {r.key: r for r in stored}
    by_output = {r.output_path: r for r in stored}  # the newest job for each output path wins
    new: list[JobSpec] = []
    changed: list[tuple[JobSpec, JobOutline]] = []
    unchanged: list[tuple[JobSpec, JobState]] = []
    planned_keys, planned_outputs = set(), set()
    for job in planned:
        planned_keys.add(job.key)
        planned_outputs.add(job.output)
        if job.key in by_key:
            unchanged.append((job, by_key[job.key].state))
        elif job.output in by_output:
            changed.append((job, by_output[job.output]))
        else:
            new.append(job)
    replaced = {old.key for _, old in changed}
    removed = [
        r
        for r in stored
        if r.key not in planned_keys and r.key not in replaced and r.output_path not in planned_outputs
    ]
    return PlanDiff(new, changed, unchanged, removed)


def _job_json(j: JobSpec, usd: dict[int, str]) -> dict[str, Any]:
    est = j.estimate
    assert est is not None
    cost = usd.get(est.micro_usd)
    if cost is None:
        cost = usd[est.micro_usd] = est.usd
    return {
        "key": j.key,
        "endpoint": j.endpoint,
        "source": j.source,
        "params": j.params,
        "output": j.output,
        "duration_s": float(j.probe.duration) if j.probe and j.probe.duration is not None else None,
        "billable_units": str(est.billable_units),
        "unit": est.unit,
        "estimated_cost_usd": cost,
        "priced_by": est.price_table,
        "price_verified": est.verified,
        "tags": list(j.tags),
        "project": j.project,
    }


def job_key(job: JobSpec, fingerprints: dict[str, str]) -> str:
    """Deterministic identity: endpoint + canonical input + fingerprints of its local media."""
    media = sorted(
        {fingerprints.get(v, v) for v in ([job.source] if job.source else []) + list(job.extra_media.values())}
    )
    canonical = _CANONICAL.encode({"endpoint": job.endpoint, "input": job.params, "media": media})
    return hashlib.sha256(canonical.encode()).hexdigest()


# json.dumps(…, sort_keys=True, separators=(",", ":"), ensure_ascii=False), made once, not per job
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def plan(manifest_path: Path, settings: Settings, prices: PriceTable, repo: Repository | None) -> Plan:
    """Expand, probe (through the cache) and price a manifest. Writes no jobs, calls no API."""
    manifest = load_manifest(manifest_path)
    synced = fal_prices.load_synced(settings.fal_prices_path)  # fal's prices from the last `prices sync`
    probed = _probe_sources(manifest, settings, repo)
    jobs: list[JobSpec] = []
    invalid: dict[tuple[str, str], InvalidItem] = {}
    seen_keys: dict[str, str] = {}  # key → origin
    # The priced copies replace the expanded jobs, which are let go one by one (100,000 jobs: memory)
    expanded, manifest = manifest.jobs[::-1], dataclasses.replace(manifest, jobs=[])
    pricer = _Pricer(manifest.endpoint, probed, prices, synced)
    while expanded:
        spec = expanded.pop()
        priced = pricer.price(spec)
        if isinstance(priced, InvalidItem):
            invalid.setdefault((priced.source, priced.reason), priced)
            continue
        if priced.key in seen_keys:
            raise ManifestError(
                f"the same job appears twice ({seen_keys[priced.key]} and {priced.origin})",
                file=str(manifest_path),
                field="sources",
                hint="list each source once",
            )
        seen_keys[priced.key] = priced.origin
        jobs.append(priced)
    return Plan(
        manifest,
        prices.label,
        jobs,
        list(invalid.values()),
        probes_run=probed.run,
        probes_cached=probed.cached,
        warnings=list(manifest.warnings),
        fal_prices=synced.label if synced else None,
    )


@dataclass(frozen=True)
class _Probed:
    """What planning learnt of the manifest's media: fingerprints, probes, and what failed why."""

    fingerprints: dict[str, str]
    probes: dict[str, ProbeResult]
    failed: dict[str, str]
    run: int  # probes run now
    cached: int  # probes found in the cache


def _probe_sources(manifest: Manifest, settings: Settings, repo: Repository | None) -> _Probed:
    """Fingerprint every source and extra media file; probe the sources, through the cache."""
    ep = manifest.endpoint
    sources = sorted({j.source for j in manifest.jobs if j.source and ep.source_kind})
    extras = sorted({p for j in manifest.jobs for p in j.extra_media.values()})
    fingerprints, failed = _fingerprint_all([*sources, *extras], settings)
    cached = repo.cached_probes(fp for fp in fingerprints.values() if probe.cacheable(fp)) if repo else {}
    probes: dict[str, ProbeResult] = {}
    misses = []
    for src in sources:
        if src in failed:
            continue
        hit = cached.get(fingerprints[src])
        if hit is not None and hit.kind == ep.source_kind:
            probes[src] = hit
        else:
            misses.append(src)
    hits = len(probes)
    if misses:
        probe.require_ffprobe()
        results = probe.probe_sources(
            misses,
            ep.source_kind or "video",
            fingerprints,
            timeout_s=settings.probe_timeout_s,
            concurrency=settings.probe_concurrency,
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
    return _Probed(fingerprints, probes, failed, len(misses), hits)


class _Pricer:
    """Checks and prices the manifest's jobs one by one; a batch repeats its values, so each field
    value is checked and each price worked out once (the memos live as long as the plan)."""

    def __init__(
        self, ep: catalog.Endpoint, probed: _Probed, prices: PriceTable, synced: fal_prices.SyncedPrices | None
    ) -> None:
        self.ep, self.probed, self.prices, self.synced = ep, probed, prices, synced
        self.checks: catalog.CheckMemo = {}
        self.estimates: dict[tuple[Any, ...], Estimate] = {}

    def price(self, spec: JobSpec) -> JobSpec | InvalidItem:
        """The manifest's job, probed and priced with its key (a new value), or why it is invalid."""
        ep, probed = self.ep, self.probed
        bad = next((probed.failed[m] for m in [spec.source, *spec.extra_media.values()] if m in probed.failed), None)
        if bad:
            return InvalidItem(spec.source or "", _strip(bad, spec.source), spec.origin)
        pr = probed.probes.get(spec.source) if spec.source else None
        duration = pr.duration if pr else None
        issues = ep.validate(spec.params, source_duration=duration, memo=self.checks)
        if issues:
            reason = f"{issues[0].field}: {issues[0].msg}" + (f" ({issues[0].hint})" if issues[0].hint else "")
            return InvalidItem(spec.source or "", reason, spec.origin)
        estimate = self._estimate(spec.params, duration)
        fingerprint = probed.fingerprints.get(spec.source, "") if spec.source else ""
        key = job_key(spec, probed.fingerprints)  # endpoint, input and media fingerprints: not the price
        return _priced(spec, probe=pr, fingerprint=fingerprint, estimate=estimate, key=key)

    def _estimate(self, params: dict[str, Any], duration: Decimal | None) -> Estimate:
        """The table's estimate, reserved against the synced fal price; the same for every job
        whose inputs the price depends on are equal (pricing.PriceTable.price_inputs)."""
        key = self.prices.price_inputs(self.ep, params, duration)
        found = self.estimates.get(key) if key is not None else None
        if found is None:
            found = fal_prices.reserve(
                self.prices.estimate(self.ep, params, duration), self.prices.entry(self.ep.id), self.synced
            )
            if key is not None:
                self.estimates[key] = found
        return found


def _priced(spec: JobSpec, **changes: Any) -> JobSpec:
    """dataclasses.replace(spec, **changes) without its per-call look at the fields (10,000 jobs)."""
    return JobSpec(**{**spec.__dict__, **changes})


def _strip(reason: str, source: str | None) -> str:
    if source and reason.startswith(f"{source}: "):
        return reason[len(source) + 2 :]
    return reason


def _fingerprint_all(items: list[str], settings: Settings) -> tuple[dict[str, str], dict[str, str]]:
    client = None
    if any(is_remote(s, data_uri=False) for s in items):
        import httpx  # only URLs need it: a plan of local files starts without it

        client = httpx.Client(timeout=probe.URL_TIMEOUT_S, follow_redirects=True)
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
        problems=tuple(
            f"{i.origin}: {i.source if len(i.source) <= 200 else shorten(i.source, 200)}: {i.reason}"
            for i in plan_.invalid
        ),
    )


@dataclass(frozen=True)
class BatchStatus:
    """One batch's jobs: how many, by state, and their estimated cost."""

    batch: str
    jobs: int
    states: dict[str, int]
    estimated_micro_usd: int

    def to_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "jobs": self.jobs,
            "states": self.states,
            "estimated_cost_usd": format_usd(self.estimated_micro_usd),
        }


def status(repo: Repository, batch: str | None = None) -> list[BatchStatus]:
    """Jobs per batch and state (one batch, or all); a batch that does not exist is an error."""
    counts = repo.state_counts(batch)
    if batch is not None and not counts and batch not in repo.batch_names():
        raise ConfigError(f'no batch named "{batch}"', hint="run `batch-runner status` to list batches")
    by_batch: dict[str, list[StateCount]] = defaultdict(list)
    for c in counts:
        by_batch[c.batch].append(c)
    return [
        BatchStatus(
            name,
            sum(c.jobs for c in cs),
            {c.state: c.jobs for c in cs},
            sum(c.estimated_micro_usd for c in cs),
        )
        for name, cs in by_batch.items()
    ]


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
