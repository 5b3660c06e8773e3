"""Use case: compare our ledger with what fal says it billed, per endpoint and day.

Finds spend fal billed that we have no record of (a duplicate submission shows up here, and is
matched with our uncertain submits when their reservations explain it), spend we recorded that
fal did not bill, and unit prices that drifted from our price table.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from .api.client import FalClient
from .db.ledger import ledger
from .db.queue import JobQueue
from .db.repo import Repository
from .errors import RemoteError
from .resolve import Resolver
from .domain import Actor, AttemptState, format_usd, usd_to_micro
from .pricing import PriceTable

TOLERANCE_MICRO_USD = 10_000  # one cent: fal reports floats


@dataclass
class Difference:
    endpoint: str
    day: str
    ours_micro_usd: int
    theirs_micro_usd: int
    explained_by: list[dict[str, Any]] = field(default_factory=list)  # our uncertain submits

    @property
    def delta_micro_usd(self) -> int:
        return self.theirs_micro_usd - self.ours_micro_usd

    def label(self, confirmed: dict[int, str]) -> None:
        """Mark each explanation confirmed (fal's records name the request it billed for that
        submit) or only possible (an uncertain submit on that endpoint and day)."""
        for u in self.explained_by:
            rid = confirmed.get(u["id"])
            u["confidence"], u["request_id"] = ("confirmed", rid) if rid else ("possible", None)

    @property
    def explained(self) -> bool:
        return self.delta_micro_usd > 0 and abs(
            self.delta_micro_usd - sum(u["reserved_micro_usd"] for u in self.explained_by)) <= TOLERANCE_MICRO_USD

    def as_dict(self) -> dict[str, Any]:
        kind = "unrecorded spend at fal" if self.delta_micro_usd > 0 else "recorded here, not billed by fal"
        return {"endpoint": self.endpoint, "day": self.day, "kind": kind, "ours_usd": format_usd(self.ours_micro_usd),
                "fal_usd": format_usd(self.theirs_micro_usd), "difference_usd": format_usd(self.delta_micro_usd),
                "explained_by_uncertain_submits": [
                    {"job": u["job_id"], "attempt": u["number"], "reserved_usd": format_usd(u["reserved_micro_usd"]),
                     "confidence": u.get("confidence", "possible"), "request_id": u.get("request_id")}
                    for u in self.explained_by]}


@dataclass
class Reconciliation:
    since: datetime
    until: datetime
    matched: list[tuple[str, str, int]]  # endpoint, day, amount
    differences: list[Difference]
    drift: list[dict[str, Any]]

    @property
    def clean(self) -> bool:
        return not self.differences and not self.drift

    def as_dict(self) -> dict[str, Any]:
        return {"since": self.since.isoformat(), "until": self.until.isoformat(),
                "matched": [{"endpoint": e, "day": d, "usd": format_usd(m)} for e, d, m in self.matched],
                "differences": [d.as_dict() for d in self.differences], "price_drift": self.drift,
                "clean": self.clean}


def _day(when: datetime) -> str:
    return when.astimezone(timezone.utc).date().isoformat()


def reconcile(repo: Repository, client: FalClient, prices: PriceTable, since: datetime | None,
              until: datetime | None) -> Reconciliation:
    until = until or datetime.now(timezone.utc)
    since = since or until - timedelta(days=1)
    _, attempts, _ = ledger(repo.engine, None, since - timedelta(days=1), until)
    ours: dict[tuple[str, str], int] = defaultdict(int)
    uncertain: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for a in attempts:
        if a["state"] == AttemptState.UNCERTAIN.value:
            uncertain[(a["endpoint"], _day(a["created_at"]))].append(a)
        when = a["finished_at"] or a["created_at"]
        if a["billed_micro_usd"] and since <= when < until:
            ours[(a["endpoint"], _day(when))] += a["billed_micro_usd"]
    theirs: dict[tuple[str, str], int] = defaultdict(int)
    drift = {}
    for row in client.usage(since.isoformat(), until.isoformat()):
        key = (row["endpoint_id"], row["bucket"][:10])
        theirs[key] += usd_to_micro(str(Decimal(str(row["cost"])).quantize(Decimal("0.000001"))))
        entry = prices.entries.get(row["endpoint_id"])
        if entry is not None:
            ours_price = entry.unit_price_micro(None)
            fal_price = usd_to_micro(str(Decimal(str(row["unit_price"])).quantize(Decimal("0.000001"))))
            if fal_price != ours_price:
                drift[row["endpoint_id"]] = {"endpoint": row["endpoint_id"], "unit": row.get("unit"),
                                             "fal_unit_price_usd": format_usd(fal_price),
                                             "price_table_unit_price_usd": format_usd(ours_price),
                                             "price_table": entry.table}
    matched, differences = [], []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key, 0), theirs.get(key, 0)
        if abs(a - b) <= TOLERANCE_MICRO_USD:
            matched.append((key[0], key[1], a))
        else:
            differences.append(Difference(key[0], key[1], a, b, uncertain.get(key, [])))
    _confirm(repo, client, [d for d in differences if d.delta_micro_usd > 0 and d.explained_by])
    return Reconciliation(since, until, matched, differences, sorted(drift.values(), key=lambda d: d["endpoint"]))


def _confirm(repo: Repository, client: FalClient, differences: list[Difference]) -> None:
    """Look each uncertain submit up in fal's request list and billing events (admin key): the
    ones fal billed by request id are confirmed; without those records every one stays possible."""
    confirmed: dict[int, str] = {}
    wanted = {u["id"] for d in differences for u in d.explained_by}
    if wanted:
        queue = JobQueue(repo.engine, Actor.current(), 60)
        pairs = [(j, a) for j, a in queue.uncertain_jobs(None) if a["id"] in wanted]
        try:
            resolver = Resolver(queue, client)
            found = resolver.lookup(pairs)
            billed = {e.request_id for e in resolver.billed_events(pairs, found)}
        except RemoteError:
            found, billed = {}, set()
        confirmed = {aid: r.request_id for aid, r in found.items() if r.request_id in billed}
    for d in differences:
        d.label(confirmed)


def render(rec: Reconciliation) -> str:
    lines = [f"reconcile {rec.since:%Y-%m-%d %H:%M} → {rec.until:%Y-%m-%d %H:%M} UTC"]
    for endpoint, day, amount in rec.matched:
        lines.append(f"  ok          {day}  {endpoint:<48} ${format_usd(amount)}")
    for d in rec.differences:
        x = d.as_dict()
        lines.append(f"  DIFFERENT   {d.day}  {d.endpoint:<48} ours ${x['ours_usd']}  fal ${x['fal_usd']}  "
                     f"({x['kind']}: ${x['difference_usd']})")
        for u in x["explained_by_uncertain_submits"]:
            if u["confidence"] == "confirmed":
                lines.append(f"              confirmed: fal billed request {u['request_id']} for the uncertain submit "
                             f"of job {u['job']} (attempt {u['attempt']}, ${u['reserved_usd']}): "
                             "`batch-runner resolve` records it")
            else:
                lines.append(f"              possibly the uncertain submit of job {u['job']} (attempt {u['attempt']}, "
                             f"${u['reserved_usd']}); fal's records could not confirm it")
    for p in rec.drift:
        lines.append(f"  PRICE DRIFT {p['endpoint']}: fal charges ${p['fal_unit_price_usd']} per {p['unit']}, "
                     f"{p['price_table']} says ${p['price_table_unit_price_usd']}")
    if rec.clean:
        lines.append("  our ledger and fal's usage agree")
    return "\n".join(lines) + "\n"
