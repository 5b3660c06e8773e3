"""Use case: `prices sync` reads fal's pricing API for every catalog endpoint into the local fal
price file, which `plan` then reserves against (the higher of it and the price table)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from . import catalog
from .api.client import FalClient
from .config import Secret, Settings
from .errors import ConfigError, RemoteError
from .fal_prices import FalPrice, SyncedPrices, load_synced, write_synced
from .pricing import PriceTable


@dataclass
class SyncReport:
    """What one sync wrote, and what it noticed."""

    path: Path
    synced: SyncedPrices
    missing: list[str] = field(default_factory=list)  # catalog endpoints fal gave no price for
    changed: list[tuple[FalPrice, FalPrice]] = field(default_factory=list)  # (last sync, now)
    unknown_units: list[FalPrice] = field(default_factory=list)  # fal unit names we cannot read
    other_units: list[tuple[FalPrice, str]] = field(default_factory=list)  # (fal, the table's unit)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "synced_at": self.synced.to_json()["synced_at"],
            "prices": self.synced.to_json()["prices"],
            "missing": self.missing,
            "changed": [
                {
                    "endpoint": new.endpoint,
                    "was_usd": str(old.unit_price),
                    "was_unit": old.unit,
                    "now_usd": str(new.unit_price),
                    "now_unit": new.unit,
                }
                for old, new in self.changed
            ],
            "unknown_units": [{"endpoint": p.endpoint, "unit": p.unit} for p in self.unknown_units],
            "unit_differs_from_table": [
                {"endpoint": p.endpoint, "fal_unit": p.unit, "table_unit": unit} for p, unit in self.other_units
            ],
        }


def sync_with_fal(settings: Settings, table: PriceTable, path: Path) -> SyncReport:
    """`batch-runner prices sync`: fal's pricing API read with FAL_KEY (or the admin key, or the
    emulator), written to `path`."""
    key = settings.fal_key or settings.fal_admin_key
    if key is None and not settings.fal_url:
        raise ConfigError("FAL_KEY is not set, so fal's pricing API cannot be read", hint="export FAL_KEY=…")
    client = FalClient(settings.hosts, key or Secret("local"), pool=1)
    try:
        return sync_prices(client, table, path)
    finally:
        client.close()


def sync_prices(client: FalClient, table: PriceTable, path: Path, now: datetime | None = None) -> SyncReport:
    """Ask fal's pricing API for every catalog endpoint's unit price and write them to `path`.

    Nothing is written unless fal answered: a failed call raises (and the file, if any, keeps
    the last sync). An answer with no usable price at all is refused the same way.
    """
    ids = [e.id for e in catalog.ENDPOINTS]
    try:
        answered = client.unit_prices(ids)
    except RemoteError as exc:
        raise type(exc)(
            f"fal's pricing API failed, nothing was written: {exc.message}",
            hint=exc.hint or "try `batch-runner prices sync` again later",
        ) from exc
    prices: dict[str, FalPrice] = {}
    for endpoint in ids:
        if endpoint in answered:
            price, unit = answered[endpoint]
            if not price.is_finite() or price < 0:
                raise RemoteError(f"fal's pricing API gave {endpoint} the price {price}, nothing was written")
            prices[endpoint] = FalPrice(endpoint, price, unit)
    if not prices:
        raise RemoteError(
            "fal's pricing API gave no price for any catalog endpoint, nothing was written",
            hint="check that FAL_KEY belongs to the account that runs the jobs",
        )
    previous = load_synced(path)
    synced = SyncedPrices(
        (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0),
        str(httpx.URL(f"{client.hosts.api}/models/pricing").copy_with(userinfo=b"")),
        prices,
    )
    write_synced(path, synced)
    report = SyncReport(path, synced, missing=[e for e in ids if e not in prices])
    for p in prices.values():
        old = previous.prices.get(p.endpoint) if previous else None
        if old is not None and (old.unit_price, old.unit) != (p.unit_price, p.unit):
            report.changed.append((old, p))
        if p.our_unit is None:
            report.unknown_units.append(p)
        elif p.our_unit != table.entry(p.endpoint).unit:
            report.other_units.append((p, table.entry(p.endpoint).unit))
    return report
