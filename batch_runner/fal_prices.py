"""fal's own prices: the local file `prices sync` writes from fal's pricing API, what its units
mean to us, and the rule that a job reserves the higher of the price table and fal's price.

Money is Decimal in memory and a decimal string in the file, never a float.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from . import atomic
from .domain import Estimate
from .errors import ConfigError
from .pricing import PriceEntry

FILE_FORMAT = "batch-runner/fal-prices/1"

SOURCE_LABEL = "fal-pricing-api"

# fal's pricing API names each endpoint's unit but does not list the names: "Values are expressed
# per model's billing unit" (https://docs.fal.ai/platform-apis/v1/models/pricing); the usage API
# gives "e.g., 'image', 'video', or a GPU/compute unit for some models"
# (https://docs.fal.ai/platform-apis/v1/models/usage); `video_second` is seen in fal's own skill
# output (skills.sh/fal-ai-community/skills/fal-platform). Only these names are read as our units;
# any other (a GPU second is not a video second) is an unknown unit, never guessed.
UNIT_NAMES = {
    "second": "second",
    "seconds": "second",
    "video_second": "second",
    "video_seconds": "second",
    "video": "video",
    "videos": "video",
}


def our_unit(fal_unit: str | None) -> str | None:
    """The price table's unit ("second" or "video") that fal's unit name means, or None."""
    return UNIT_NAMES.get((fal_unit or "").strip().lower())


@dataclass(frozen=True)
class FalPrice:
    """One endpoint's unit price as fal's pricing API gave it."""

    endpoint: str
    unit_price: Decimal
    unit: str  # fal's name for it, as given

    @property
    def micro_usd(self) -> int:
        """In micro-USD, rounded up (fal may quote finer than a micro-dollar)."""
        return _ceil(self.unit_price * 1_000_000)

    @property
    def our_unit(self) -> str | None:
        return our_unit(self.unit)


@dataclass(frozen=True)
class SyncedPrices:
    """The last `prices sync`: when, from where, and fal's price per endpoint."""

    synced_at: datetime
    source: str
    prices: dict[str, FalPrice]

    @property
    def label(self) -> str:
        return f"{SOURCE_LABEL}@{self.synced_at:%Y-%m-%dT%H:%M:%SZ}"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FILE_FORMAT,
            "synced_at": self.synced_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "source": self.source,
            "currency": "USD",
            "prices": {e: {"unit_price": str(p.unit_price), "unit": p.unit} for e, p in sorted(self.prices.items())},
        }


def load_synced(path: Path | None) -> SyncedPrices | None:
    """The synced price file, or None when there is none yet (or no path)."""
    if path is None or not path.exists():
        return None
    hint = "run `batch-runner prices sync` again, or delete the file"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FILE_FORMAT:
            raise ConfigError(f"{path}: not a batch-runner fal price file (format {doc.get('format')!r})", hint=hint)
        synced_at = datetime.fromisoformat(str(doc["synced_at"]).replace("Z", "+00:00")).astimezone(UTC)
        prices = {}
        for endpoint, p in doc["prices"].items():
            price = Decimal(p["unit_price"]) if isinstance(p["unit_price"], str) else None
            if price is None or not price.is_finite() or price < 0:
                raise ConfigError(f'{path}: {endpoint}: unit_price must be a decimal string like "0.06"', hint=hint)
            prices[endpoint] = FalPrice(endpoint, price, str(p["unit"]))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", hint=hint) from exc
    except (ValueError, KeyError, TypeError, AttributeError, InvalidOperation) as exc:
        raise ConfigError(f"{path}: not a valid fal price file ({type(exc).__name__}: {exc})", hint=hint) from exc
    return SyncedPrices(synced_at, str(doc.get("source", "")), prices)


def write_synced(path: Path, synced: SyncedPrices) -> None:
    """Write the file all or nothing: a temporary file in the same folder, then one rename."""
    text = json.dumps(synced.to_json(), indent=2, sort_keys=False) + "\n"
    try:
        atomic.write_text(path, text)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}", hint="check the folder and free space") from exc


def synced_estimate(table: Estimate, entry: PriceEntry, price: FalPrice) -> Estimate | None:
    """The job's price at fal's synced unit price, or None when it cannot be compared.

    fal's pricing API gives one unit price per endpoint; we read it as the table's base price (the
    540p, shortest-duration one, the price the unit stands for) and scale it by the table's own
    ratios for resolution, duration and modifiers. A unit we cannot map, or one that differs from
    the table's, is not converted: the table's estimate stands.
    """
    base = entry.unit_price_micro(None)
    if price.our_unit != entry.unit or base <= 0:
        return None
    unit_price = _ceil(Decimal(table.unit_price_micro_usd) * price.micro_usd / base)
    return Estimate(
        micro_usd=_ceil(unit_price * table.billable_units),
        billable_units=table.billable_units,
        unit=table.unit,
        unit_price_micro_usd=unit_price,
        price_table=table.price_table,
        verified=table.verified,
    )


def reserve(table: Estimate, entry: PriceEntry, synced: SyncedPrices | None) -> Estimate:
    """The estimate a job is planned and reserved at: the higher of the price table's and the last
    synced fal price's, so a price fal raised never lets a run spend past its budget. The table's
    evidence (verified or not) stays with the job; the label names which price won."""
    price = synced.prices.get(entry.endpoint) if synced else None
    fal = synced_estimate(table, entry, price) if price is not None else None
    if fal is None or fal.micro_usd <= table.micro_usd:
        return table
    assert synced is not None
    return Estimate(
        micro_usd=fal.micro_usd,
        billable_units=fal.billable_units,
        unit=fal.unit,
        unit_price_micro_usd=fal.unit_price_micro_usd,
        price_table=synced.label,
        verified=table.verified,
    )


def _ceil(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING))
