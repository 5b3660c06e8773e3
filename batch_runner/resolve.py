"""Use case: settle what only fal knows. An uncertain submit (its answer was lost) is looked up in
fal's request listing by endpoint, time window and the hash of its input; a bill left pending
(a refused run fal may have charged) is looked up in fal's per-request billing events.

Both platform APIs need an ADMIN key (FAL_ADMIN_KEY, else FAL_KEY). Without one, nothing changes
and the caller is told which key is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .api.answers import input_sha256
from .api.client import FalClient
from .api.platform import BillingEvent, FalRequestRecord, billing_events, list_requests
from .config import Secret, Settings
from .db.repo import Repository
from .db.settle import Settler
from .domain import PENDING_BILLING_EVENTS, format_usd
from .errors import AuthError, ConfigError, RemoteError
from .records import AttemptRecord, JobRecord

#: How long after a submit its request may take to show in fal's listing. fal documents no such
#: delay; until this has passed, "not found" is not proof, and the job stays uncertain.
LISTING_LAG_S = 15 * 60.0
SLACK = timedelta(minutes=2)  # clocks: ours wrote sent_at, fal's wrote sent_at
BILLING_EVENTS_SOURCE = "fal billing events"
BILLING_LOOKBACK = timedelta(days=89)  # within fal's 90-day limit per billing-events call, with slack


@dataclass(frozen=True)
class Settlement:
    job_id: int
    outcome: str  # adopted, requeued, cancelled, left, billed
    detail: str
    request_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"job": self.job_id, "outcome": self.outcome, "detail": self.detail, "request_id": self.request_id}


@dataclass
class ResolveReport:
    settled: list[Settlement] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for s in self.settled if s.outcome == outcome)

    def as_dict(self) -> dict[str, Any]:
        outcomes = ("adopted", "requeued", "cancelled", "left", "billed")
        return {"counts": {o: self.count(o) for o in outcomes}, "jobs": [s.as_dict() for s in self.settled]}


def admin_key_error(exc: RemoteError) -> AuthError:
    return AuthError(
        f"fal refused its request listing and billing events ({exc.message})",
        hint="they need an ADMIN key: create one in fal's dashboard and set FAL_ADMIN_KEY; "
        "the uncertain jobs are left as they were",
    )


def _sent(attempt: AttemptRecord) -> datetime:
    return attempt.sent_at or attempt.created_at


class Resolver:
    """Looks uncertain submits and pending bills up in fal's records, and records what it finds."""

    def __init__(
        self, settler: Settler, client: FalClient, *, listing_lag_s: float = LISTING_LAG_S, now: datetime | None = None
    ) -> None:
        self.settler, self.client, self.lag = settler, client, timedelta(seconds=listing_lag_s)
        self.now = now or datetime.now(UTC)

    def run(self, batches: Sequence[str] | None, job_ids: Sequence[int] | None = None) -> ResolveReport:
        report = ResolveReport()
        try:
            uncertain = self.settler.uncertain_jobs(batches, job_ids)
            found = self.lookup(uncertain)
            events = self._events([a for _, a in uncertain], found)
            for job, attempt in uncertain:
                report.settled.append(self._settle(job, attempt, found.get(attempt.id), events))
            if job_ids is None:
                report.settled.extend(self._settle_bills(batches))
        except AuthError as exc:
            raise admin_key_error(exc) from exc
        return report

    # ------------------------------------------------------------------ look-ups

    def lookup(self, uncertain: list[tuple[JobRecord, AttemptRecord]]) -> dict[int, FalRequestRecord]:
        """Match each uncertain attempt with the request fal lists for it, if any: by request id
        when one is known, else by endpoint, time window and input hash (each request once)."""
        by_endpoint: dict[str, list[AttemptRecord]] = {}
        for job, attempt in uncertain:
            by_endpoint.setdefault(job.endpoint, []).append(attempt)
        matches: dict[int, FalRequestRecord] = {}
        for endpoint, attempts in by_endpoint.items():
            start = min(_sent(a) for a in attempts) - SLACK
            end = max(self.now, max(_sent(a) for a in attempts) + SLACK)
            records = list_requests(self.client.transport, self.client.hosts.api, endpoint, start, end)
            known = self.settler.known_request_ids(r.request_id for r in records)
            taken: set[str] = set()
            for attempt in sorted(attempts, key=_sent):
                hit = self._match(attempt, records, known | taken)
                if hit is not None:
                    matches[attempt.id] = hit
                    taken.add(hit.request_id)
        return matches

    @staticmethod
    def _match(attempt: AttemptRecord, records: list[FalRequestRecord], taken: set[str]) -> FalRequestRecord | None:
        if attempt.request_id:
            return next((r for r in records if r.request_id == attempt.request_id), None)
        digest = attempt.input_sha256
        if not digest:
            return None
        sent = _sent(attempt)
        candidates = [
            r
            for r in records
            if r.request_id not in taken
            and r.json_input is not None
            and input_sha256(r.json_input) == digest
            and (r.sent_at is None or r.sent_at >= sent - SLACK)
        ]
        return min(candidates, key=lambda r: r.sent_at or sent) if candidates else None

    def billed_events(
        self, pairs: list[tuple[JobRecord, AttemptRecord]], found: dict[int, FalRequestRecord]
    ) -> list[BillingEvent]:
        """fal's billing events for the requests found for these uncertain submits."""
        return list(self._events([a for _, a in pairs], found).values())

    def _events(self, attempts: list[AttemptRecord], found: dict[int, FalRequestRecord]) -> dict[str, BillingEvent]:
        """fal's billing events for the requests found that have ended."""
        ended = [r for r in found.values() if r.ended_at is not None]
        if not ended:
            return {}
        start = min(_sent(a) for a in attempts) - SLACK
        endpoints = sorted({r.endpoint_id for r in ended})
        got = billing_events(self.client.transport, self.client.hosts.api, start, self.now + SLACK, endpoints)
        return {e.request_id: e for e in got}

    # ------------------------------------------------------------------ settling

    def _settle(
        self,
        job: JobRecord,
        attempt: AttemptRecord,
        record: FalRequestRecord | None,
        events: dict[str, BillingEvent],
    ) -> Settlement:
        jid = job.id
        if record is None:
            if self.now - _sent(attempt) < self.lag:
                return Settlement(
                    jid,
                    "left",
                    f"not in fal's request list yet; settled after "
                    f"{self.lag.total_seconds() / 60:g} min from the submit",
                )
            if self.settler.settle_unsent(job, attempt, "fal has no request for this submit: queued again"):
                return Settlement(jid, "requeued", "fal never created the request")
            return Settlement(jid, "left", "changed meanwhile")
        rid = record.request_id
        event = events.get(rid)
        if record.ended_at is None or record.status_code == 200 or event is not None:
            urls = self.client.request_urls(job.endpoint, rid)
            how = "running at fal" if record.ended_at is None else f"ended with HTTP {record.status_code}"
            if self.settler.adopt(job, attempt, rid, urls.status_url, urls.response_url, urls.cancel_url, how):
                return Settlement(
                    jid, "adopted", f"fal has it ({how}); the next run follows it and records its cost", rid
                )
            return Settlement(jid, "left", "changed meanwhile", rid)
        reason = f"fal ran request {rid} and it failed (HTTP {record.status_code}) without billing: queued again"
        if self.settler.settle_unsent(job, attempt, reason, request_id=rid, price_source=BILLING_EVENTS_SOURCE):
            return Settlement(jid, "requeued", reason, rid)
        return Settlement(jid, "left", "changed meanwhile", rid)

    def _settle_bills(self, batches: Sequence[str] | None) -> list[Settlement]:
        """Bills that are not yet fal's figure, settled with fal's per-request billing events:
        $0 pending fal's word (a refused run fal may have charged for), and provisional ones (our
        price table on the verified output, when fal's answer carried no billable units). An
        event found replaces the figure. None found: a pending bill becomes $0 once fal's window
        has passed (fal charged nothing); a provisional one stays as it is, marked, since a
        missing event is not proof that fal charged nothing for output it delivered."""
        # fal's billing events answer at most 90 days per call (docs: platform-apis/v1/models/billing-events);
        # older bills stay as they are, marked, and are no longer asked about
        pending = self.settler.pending_bills(batches, self.now - BILLING_LOOKBACK)
        if not pending:
            return []
        start = min(a.created_at for a in pending) - SLACK
        got = {
            e.request_id: e
            for e in billing_events(
                self.client.transport,
                self.client.hosts.api,
                start,
                self.now + SLACK,
                sorted({a.endpoint for a in pending if a.endpoint}),
            )
        }
        out = []
        for attempt in pending:
            event = got.get(attempt.request_id or "")
            provisional = attempt.price_source != PENDING_BILLING_EVENTS
            if event is None and (provisional or self.now - (attempt.finished_at or attempt.created_at) < self.lag):
                out.append(
                    Settlement(
                        attempt.job_id,
                        "left",
                        "fal's billing events do not show it yet; "
                        f"${format_usd(attempt.billed_micro_usd or 0)} stays recorded as "
                        f"{attempt.price_source}",
                        attempt.request_id,
                    )
                )
                continue
            billed = event.cost_micro_usd if event else 0
            units = f"{event.output_units:f}" if event and event.output_units is not None else None
            self.settler.settle_bill(attempt, billed, units, BILLING_EVENTS_SOURCE)
            out.append(Settlement(attempt.job_id, "billed", f"fal billed ${format_usd(billed)}", attempt.request_id))
        return out

    # ------------------------------------------------------------------ cancel

    def cancel(self, batches: Sequence[str] | None, job_ids: Sequence[int]) -> ResolveReport:
        """Cancel uncertain jobs at fal: find each one's request first. Still queued at fal: fal
        cancels it ($0). Running or ended: adopted and followed to its real end (it may bill).
        Never created: cancelled here. Not findable yet: left as it is, and said so."""
        report = ResolveReport()
        try:
            uncertain = self.settler.uncertain_jobs(batches, job_ids)
            found = self.lookup(uncertain)
            for job, attempt in uncertain:
                report.settled.append(self._cancel_one(job, attempt, found.get(attempt.id)))
        except AuthError as exc:
            raise admin_key_error(exc) from exc
        return report

    def _cancel_one(self, job: JobRecord, attempt: AttemptRecord, record: FalRequestRecord | None) -> Settlement:
        jid = job.id
        if record is None:
            if self.now - _sent(attempt) < self.lag:
                return Settlement(
                    jid,
                    "left",
                    "not cancelled: fal's request list does not show it yet, so it may still run; try again later",
                )
            if self.settler.cancel_uncertain(job, attempt, "cancelled: fal never created the request"):
                return Settlement(jid, "cancelled", "fal never created the request")
            return Settlement(jid, "left", "changed meanwhile")
        urls = self.client.request_urls(job.endpoint, record.request_id)
        answer = self.client.cancel(urls.cancel_url) if record.ended_at is None else "ALREADY_COMPLETED"
        if answer == "OK":
            self.settler.cancel_uncertain(job, attempt, f"cancelled at fal while queued ({answer})", record.request_id)
            return Settlement(jid, "cancelled", "cancelled at fal before it ran: nothing billed", record.request_id)
        self.settler.adopt(
            job,
            attempt,
            record.request_id,
            urls.status_url,
            urls.response_url,
            urls.cancel_url,
            f"cancel answered {answer}",
        )
        return Settlement(
            jid,
            "adopted",
            f"fal answered {answer}: it may finish and bill, so it is followed to its end",
            record.request_id,
        )


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
        resolver = Resolver(repo.settler, client, listing_lag_s=listing_lag_s)
        if cancel_ids is not None:
            return resolver.cancel(batches, cancel_ids)
        return resolver.run(batches)
    finally:
        client.close()
