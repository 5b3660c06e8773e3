"""Use case: compare our ledger with what fal says it billed, per endpoint and day.

Finds spend fal billed that we have no record of (a duplicate submission shows up here, and is
matched with our uncertain submits when their reservations explain it), spend we recorded that
fal did not bill, and unit prices that drifted: fal's pricing API against the last `prices sync`,
and the price each usage row was billed at against the pricing API's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from . import catalog
from .api.client import FalClient, malformed
from .config import Secret, Settings
from .db.ledger import Scope, attempts_in_scope
from .db.repo import Repository
from .domain import AttemptState, format_usd, usd_to_micro
from .errors import AuthError, ConfigError, RemoteError
from .fal_prices import SyncedPrices, load_synced, our_unit
from .pricing import PriceTable
from .records import AttemptRecord
from .resolve import Resolver

TOLERANCE_MICRO_USD = 10_000  # one cent: fal reports floats
NANO = Decimal("0.000000001")
DAY = timedelta(days=1)


@dataclass
class Difference:
    endpoint: str
    day: str
    ours_micro_usd: int
    theirs_micro_usd: int
    explained_by: list[AttemptRecord] = field(default_factory=list)  # our uncertain submits
    # attempt id → the request fal billed for it, by fal's own records; the others are only possible
    confirmed: dict[int, str] = field(default_factory=dict)

    @property
    def delta_micro_usd(self) -> int:
        return self.theirs_micro_usd - self.ours_micro_usd

    def label(self, confirmed: dict[int, str]) -> None:
        """Mark each explanation confirmed (fal's records name the request it billed for that
        submit) or only possible (an uncertain submit on that endpoint and day)."""
        self.confirmed = {u.id: confirmed[u.id] for u in self.explained_by if u.id in confirmed}

    @property
    def explained(self) -> bool:
        return (
            self.delta_micro_usd > 0
            and abs(self.delta_micro_usd - sum(u.reserved_micro_usd or 0 for u in self.explained_by))
            <= TOLERANCE_MICRO_USD
        )

    def as_dict(self) -> dict[str, Any]:
        kind = "unrecorded spend at fal" if self.delta_micro_usd > 0 else "recorded here, not billed by fal"
        return {
            "endpoint": self.endpoint,
            "day": self.day,
            "kind": kind,
            "ours_usd": format_usd(self.ours_micro_usd),
            "fal_usd": format_usd(self.theirs_micro_usd),
            "difference_usd": format_usd(self.delta_micro_usd),
            "explained_by_uncertain_submits": [
                {
                    "job": u.job_id,
                    "attempt": u.number,
                    "reserved_usd": format_usd(u.reserved_micro_usd or 0),
                    "confidence": "confirmed" if u.id in self.confirmed else "possible",
                    "request_id": self.confirmed.get(u.id),
                }
                for u in self.explained_by
            ],
        }


@dataclass
class Reconciliation:
    since: datetime  # whole UTC days: the window compared on both sides
    until: datetime
    matched: list[tuple[str, str, int]]  # endpoint, day, amount
    differences: list[Difference]
    drift: list[dict[str, Any]]
    notes: list[dict[str, Any]] = field(default_factory=list)  # unknown units and the like: not drift
    requested: tuple[datetime, datetime] | None = None  # the window asked for, before widening to days

    @property
    def clean(self) -> bool:
        return not self.differences and not self.drift

    def as_dict(self) -> dict[str, Any]:
        asked = self.requested or (self.since, self.until)
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "requested_since": asked[0].isoformat(),
            "requested_until": asked[1].isoformat(),
            "matched": [{"endpoint": e, "day": d, "usd": format_usd(m)} for e, d, m in self.matched],
            "differences": [d.as_dict() for d in self.differences],
            "price_drift": self.drift,
            "notes": self.notes,
            "clean": self.clean,
        }


def _day(when: datetime) -> str:
    return when.astimezone(UTC).date().isoformat()


def whole_days(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """[since, until) widened to whole UTC days: midnight before `since`, the midnight at or after `until`."""
    start = since.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    end = until.astimezone(UTC)
    midnight = end.replace(hour=0, minute=0, second=0, microsecond=0)
    return start, (midnight if midnight == end else midnight + DAY)


def _bucket_day(bucket: str) -> str:
    """The UTC day of a usage bucket ("Time bucket timestamp in user's timezone with offset")."""
    try:
        at = datetime.fromisoformat(bucket.replace("Z", "+00:00"))
    except ValueError:
        raise RemoteError(f"usage: fal's answer has a bucket that is not an ISO 8601 time: {bucket[:60]!r}") from None
    return _day(at if at.tzinfo else at.replace(tzinfo=UTC))


def _micro(value: Any) -> int:
    """fal's money is a JSON number: through str() into Decimal, to the micro-dollar."""
    return usd_to_micro(str(Decimal(str(value)).quantize(Decimal("0.000001"))))


def reconcile_with_fal(
    settings: Settings,
    open_repo: Callable[[], Repository],
    prices: PriceTable,
    since: datetime | None,
    until: datetime | None,
) -> Reconciliation:
    """`batch-runner reconcile`: the comparison with fal's usage API, through an admin key (or the
    emulator), against the last `prices sync`. Without a key it refuses before opening the database."""
    if settings.admin_key is None and not settings.fal_url:
        raise ConfigError(
            "no admin key is set, so fal's usage API cannot be read",
            hint="export FAL_ADMIN_KEY=<an ADMIN key from fal's dashboard> (or FAL_KEY)",
        )
    client = FalClient(settings.hosts, settings.admin_key or Secret("local"))
    try:
        return reconcile(open_repo(), client, prices, since, until, load_synced(settings.fal_prices_path))
    except AuthError as exc:
        raise AuthError(
            f"fal refused the usage API call ({exc.message})",
            hint="the usage API needs an admin key: create one in fal's dashboard and set "
            "FAL_ADMIN_KEY to it (or FAL_KEY)",
        ) from exc
    finally:
        client.close()


def reconcile(
    repo: Repository,
    client: FalClient,
    prices: PriceTable,
    since: datetime | None,
    until: datetime | None,
    synced: SyncedPrices | None = None,
) -> Reconciliation:
    asked_until = until or datetime.now(UTC)
    asked_since = since or asked_until - DAY
    # Both sides are compared over whole UTC days. fal's usage API "Defaults to true" for
    # bound_to_timeframe: "dates are aligned to the start of the timeframe period (e.g., start of
    # day) and end is made exclusive (e.g., start of next day)"
    # (https://docs.fal.ai/platform-apis/v1/models/usage), so a window starting at 13:00 comes back
    # with the whole day's spend. Asking for bound_to_timeframe=false alone would be exact only if
    # fal honours it and buckets the partial day as we do; widening to whole days and sending
    # midnight-aligned start/end with bound_to_timeframe=false and timezone=UTC gives the same
    # answer under every reading: exact, aligned (a no-op at midnight), or an end moved to the
    # next midnight, whose extra day is dropped below by its bucket.
    start, end = whole_days(asked_since, asked_until)
    days = {_day(start + DAY * i) for i in range((end - start) // DAY)}
    attempts = attempts_in_scope(repo.engine, Scope(since=start - DAY, until=end))
    ours: dict[tuple[str, str], int] = defaultdict(int)
    uncertain: dict[tuple[str, str], list[AttemptRecord]] = defaultdict(list)
    for a in attempts:
        endpoint = a.endpoint or ""
        if a.state == AttemptState.UNCERTAIN:
            uncertain[(endpoint, _day(a.created_at))].append(a)
        when = a.finished_at or a.created_at
        if a.billed_micro_usd and start <= when < end:
            ours[(endpoint, _day(when))] += a.billed_micro_usd
    ids = [e.id for e in catalog.ENDPOINTS]
    theirs: dict[tuple[str, str], int] = defaultdict(int)
    rows = client.usage(_iso(start), _iso(end), ids, timeframe="day", bound_to_timeframe=False, tz="UTC")
    with malformed("usage"):  # a row without its fields, or a cost that is not a number: one clear error
        for row in rows:
            day = _bucket_day(str(row["bucket"]))
            if day in days:
                theirs[(row["endpoint_id"], day)] += _micro(row["cost"])
        drift, notes = _prices(client, prices, synced, [r for r in rows if _bucket_day(str(r["bucket"])) in days])
    matched, differences = [], []
    for key in sorted(set(ours) | set(theirs)):
        our_micro, their_micro = ours.get(key, 0), theirs.get(key, 0)
        if abs(our_micro - their_micro) <= TOLERANCE_MICRO_USD:
            matched.append((key[0], key[1], our_micro))
        else:
            differences.append(Difference(key[0], key[1], our_micro, their_micro, uncertain.get(key, [])))
    _confirm(repo, client, [d for d in differences if d.delta_micro_usd > 0 and d.explained_by])
    return Reconciliation(start, end, matched, differences, drift, notes, (asked_since, asked_until))


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _same(a: Decimal, b: Decimal) -> bool:
    """Equal to the nano-dollar: fal's prices arrive as JSON numbers (0.06 may be 0.06000000000000001)."""
    return a.quantize(NANO) == b.quantize(NANO)


def _price_text(price: Decimal) -> str:
    micro = price * 1_000_000
    return format_usd(int(micro)) if micro == micro.to_integral_value() else f"{price.normalize():f}"


def _prices(
    client: FalClient, table: PriceTable, synced: SyncedPrices | None, rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Price drift, judged by fal's own numbers only: its pricing API now against the last
    `prices sync` (fal changed its price), and the unit price each usage row was billed at against
    the pricing API's, which the ledger bills by (x-fal-billable-units × that price). The price
    table is not compared: fal gives one unit price per endpoint, and what it means for each
    resolution and duration is not documented. A unit name we cannot map is a note, never drift."""
    found = _PriceFindings()
    try:
        now = client.unit_prices([e.id for e in catalog.ENDPOINTS])
    except RemoteError as exc:
        found.note(
            ("*", "pricing API"),
            None,
            "prices not checked",
            None,
            "pricing API",
            f"fal's pricing API failed: {exc.message}",
        )
        now = {}
    for endpoint, (price, unit) in sorted(now.items()):
        found.quoted(endpoint, price, unit, table, synced)
    for row in rows:
        endpoint = str(row["endpoint_id"])
        found.billed(endpoint, row.get("unit"), row, now.get(endpoint))
    return ([found.drift[k] for k in sorted(found.drift)], [found.notes[k] for k in sorted(found.notes)])


@dataclass
class _PriceFindings:
    """What `_prices` finds, keyed so each finding is said once: drift and notes."""

    drift: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    notes: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def note(self, key: tuple[str, str], endpoint: str | None, kind: str, unit: Any, where: str, detail: str) -> None:
        self.notes[key] = {"endpoint": endpoint, "kind": kind, "unit": unit, "where": where, "detail": detail}

    def unknown(self, endpoint: str, unit: Any, where: str) -> None:
        self.note(
            (endpoint, where),
            endpoint,
            "unknown unit",
            unit,
            where,
            f"fal's {where} names the unit {unit!r}, which batch-runner cannot "
            "map to a second or a video; its price is not compared",
        )

    def quoted(self, endpoint: str, price: Decimal, unit: str, table: PriceTable, synced: SyncedPrices | None) -> None:
        """The pricing API's price now: against the price table's unit and the last sync."""
        if our_unit(unit) is None:
            self.unknown(endpoint, unit, "pricing API")
            return
        entry = table.entries.get(endpoint)
        if entry is not None and our_unit(unit) != entry.unit:
            self.note(
                (endpoint, "table"),
                endpoint,
                "unit differs from the price table",
                unit,
                "pricing API",
                f"fal prices it per {unit}, the price table per {entry.unit}; plans and budgets use the table for it",
            )
        was = synced.prices.get(endpoint) if synced else None
        if was is not None and synced is not None and (not _same(was.unit_price, price) or was.unit != unit):
            self.drift[(endpoint, "sync")] = {
                "endpoint": endpoint,
                "kind": "fal changed its price since the last sync",
                "unit": unit,
                "fal_unit_price_usd": _price_text(price),
                "compared_with": f"{synced.label} (prices sync)",
                "compared_with_unit": was.unit,
                "compared_with_usd": _price_text(was.unit_price),
            }

    def billed(self, endpoint: str, billed_unit: Any, row: dict[str, Any], quoted: tuple[Decimal, str] | None) -> None:
        """A usage row's price against what the pricing API quotes today."""
        if our_unit(billed_unit) is None:
            self.unknown(endpoint, billed_unit, "usage API")
            return
        billed = Decimal(str(row["unit_price"]))
        if quoted is None or our_unit(quoted[1]) is None:
            return
        if quoted[1] != billed_unit or not _same(quoted[0], billed):
            # A note, not drift: a usage row carries the price of its day (fal may have changed it
            # since), and the pricing API may quote a discounted or per-resolution price ("Custom
            # pricing or discounts may be applied", docs: platform-apis/v1/models/pricing).
            self.note(
                (endpoint, f"billed {billed} {billed_unit}"),
                endpoint,
                "fal billed a price its pricing API does not quote today",
                billed_unit,
                "usage API",
                f"billed ${_price_text(billed)} per {billed_unit}; the pricing API quotes "
                f"${_price_text(quoted[0])} per {quoted[1]} (a price change in the window, a discount or "
                "a per-resolution price); the amounts above are fal's own",
            )


def _confirm(repo: Repository, client: FalClient, differences: list[Difference]) -> None:
    """Look each uncertain submit up in fal's request list and billing events (admin key): the
    ones fal billed by request id are confirmed; without those records every one stays possible."""
    confirmed: dict[int, str] = {}
    wanted = {u.id for d in differences for u in d.explained_by}
    if wanted:
        pairs = [(j, a) for j, a in repo.settler.uncertain_jobs(None) if a.id in wanted]
        try:
            resolver = Resolver(repo.settler, client)
            found = resolver.lookup(pairs)
            billed = {e.request_id for e in resolver.billed_events(pairs, found)}
        except RemoteError:
            found, billed = {}, set()
        confirmed = {aid: r.request_id for aid, r in found.items() if r.request_id in billed}
    for d in differences:
        d.label(confirmed)
