"""Exact job prices from a price table and the catalog's billing rules.

The default table ships in `data/prices.yaml`; a user's price file overrides it per endpoint.
Every estimate names the table (name@version) that priced it. Money is integer micro-USD.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from . import catalog
from .domain import Estimate, ceil_decimal, usd_to_micro
from .errors import ConfigError, ManifestError
from .yamlload import LineDict, load_yaml

DEFAULT_PRICES_PATH = Path(__file__).parent / "data" / "prices.yaml"
_UNITS = ("second", "video")
# How a price is known, strongest first. Only a price stated on a fal page we hold (the seeds in
# shared/seeds/, cited by line) is verified; everything else plans with a marker.
EVIDENCE = {
    "fal-page": "stated on a fal page we hold",
    "multipliers-only": "a fal page we hold states the resolution/duration multipliers, not the base price",
    "reported": "quoted from a fal page we do not hold",
    "third-party": "a third party's figure only",
    "conflict": "sources disagree",
    "inferred": "not published anywhere we know; inferred",
}
VERIFIED_EVIDENCE = "fal-page"


@dataclass(frozen=True)
class Modifier:
    """A price factor that applies when every `when` field equals the job's input."""

    when: dict[str, Any]
    multiplier: Decimal
    verified: bool = True

    def matches(self, params: dict[str, Any]) -> bool:
        return all(params.get(k) == v for k, v in self.when.items())


@dataclass(frozen=True)
class PriceEntry:
    """The prices of one endpoint in one table."""

    endpoint: str
    unit: str
    prices_micro: dict[str, int]  # resolution (or "*") → unit price
    duration_multipliers: dict[str, Decimal]
    modifiers: tuple[Modifier, ...]
    verified: bool
    source: str
    table: str  # name@version of the table this entry came from
    evidence: str | None = None  # one of EVIDENCE; None in a user's file that does not say

    def unit_price_micro(self, resolution: str | None) -> int:
        if "*" in self.prices_micro:
            return self.prices_micro["*"]
        return self.prices_micro[resolution or "540p"]


class PriceTable:
    """Price entries by endpoint id, plus the table's identity."""

    def __init__(self, name: str, version: str, entries: dict[str, PriceEntry]) -> None:
        self.name, self.version, self.entries = name, version, entries

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def entry(self, endpoint_id: str) -> PriceEntry:
        try:
            return self.entries[endpoint_id]
        except KeyError:
            raise ConfigError(
                f"price table {self.label} has no price for {endpoint_id}", hint="add it to your --prices file"
            ) from None

    def price_inputs(
        self, endpoint: catalog.Endpoint, params: dict[str, Any], duration: Decimal | None
    ) -> tuple[Any, ...] | None:
        """Everything `estimate` reads of a job, as a key: jobs with equal keys have equal estimates
        (the duration as written, so that 5E+1 s and 50 s bill as they print). None when the table
        has no such endpoint or a value cannot be a key."""
        entry = self.entries.get(endpoint.id)
        if entry is None:
            return None
        key = (
            endpoint.id,
            None if endpoint.billing == catalog.PER_VIDEO or duration is None else str(duration),
            "duration" in params,
            params.get("duration"),
            params.get("resolution"),
            *(params.get(k) for mod in entry.modifiers for k in mod.when),
        )
        try:
            hash(key)
        except TypeError:
            return None
        return key

    def estimate(self, endpoint: catalog.Endpoint, params: dict[str, Any], duration: Decimal | None) -> Estimate:
        """The exact price of one job; `params` must already carry the schema defaults."""
        entry = self.entry(endpoint.id)
        if endpoint.billing == catalog.PER_VIDEO:
            units = Decimal(1)
        else:
            if duration is None:
                raise ValueError(f"{endpoint.id} bills per second and needs the source duration")
            units = ceil_decimal(duration)
        factor = Decimal(1)
        if endpoint.billing == catalog.PER_VIDEO and "duration" in params:
            factor *= entry.duration_multipliers.get(params["duration"], Decimal(1))
        verified = entry.verified
        for mod in entry.modifiers:
            if mod.matches(params):
                factor *= mod.multiplier
                verified = verified and mod.verified
                break
        unit_price = _micro(entry.unit_price_micro(params.get("resolution")) * factor)
        return Estimate(
            micro_usd=_micro(unit_price * units),
            billable_units=units,
            unit=entry.unit,
            unit_price_micro_usd=unit_price,
            price_table=entry.table,
            verified=verified,
        )


def _micro(value: Decimal | int) -> int:
    return int(Decimal(value).to_integral_value(rounding=ROUND_CEILING))


def load_price_table(override: Path | None = None) -> PriceTable:
    """The default table, with the entries of a user's price file laid over it."""
    table = _parse(DEFAULT_PRICES_PATH, require_all=True)
    if override is None:
        return table
    user = _parse(override, require_all=False)
    return PriceTable(user.name, user.version, {**table.entries, **user.entries})


def _parse(path: Path, *, require_all: bool) -> PriceTable:
    name = str(path)
    try:
        doc = load_yaml(path)
    except ManifestError as exc:
        raise ConfigError(f"price file {exc.message}", hint=exc.hint) from exc
    if not isinstance(doc, LineDict):
        raise ConfigError(f"{name}: a price file is a mapping with name, version and endpoints")
    for key in ("name", "version", "endpoints"):
        if key not in doc:
            raise ConfigError(f"{name}: missing {key!r}", hint="see batch_runner/data/prices.yaml")
    unknown = set(doc) - {"name", "version", "currency", "endpoints"}
    if unknown:
        raise ConfigError(f"{name}:{doc.line_of(sorted(unknown)[0])}: unknown key {sorted(unknown)[0]!r}")
    if doc.get("currency", "USD") != "USD":
        raise ConfigError(f"{name}: only USD prices are supported")
    label = f"{doc['name']}@{doc['version']}"
    endpoints = doc["endpoints"]
    if not isinstance(endpoints, LineDict):
        raise ConfigError(f"{name}:{doc.line_of('endpoints')}: endpoints must be a mapping")
    entries: dict[str, PriceEntry] = {}
    for ep_name, raw in endpoints.items():
        where = f"{name}:{endpoints.line_of(ep_name)}"
        try:
            ep = catalog.endpoint(ep_name)
        except KeyError:
            raise ConfigError(
                f"{where}: unknown endpoint {ep_name!r}", hint=catalog.suggest_endpoint(ep_name)
            ) from None
        entries[ep.id] = _parse_entry(ep, raw, where, label)
    if require_all:
        missing = [e.id for e in catalog.ENDPOINTS if e.id not in entries]
        if missing:
            raise ConfigError(f"{name}: no price for {', '.join(missing)}")
    return PriceTable(str(doc["name"]), str(doc["version"]), entries)


def _parse_entry(ep: catalog.Endpoint, raw: Any, where: str, label: str) -> PriceEntry:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {ep.id}: expected a mapping with unit and prices")
    unknown = set(raw) - {"unit", "prices", "duration_multipliers", "modifiers", "verified", "source", "evidence"}
    if unknown:
        raise ConfigError(f"{where}: {ep.id}: unknown key {sorted(unknown)[0]!r}")
    unit = raw.get("unit")
    if unit not in _UNITS:
        raise ConfigError(f"{where}: {ep.id}: unit must be one of {', '.join(_UNITS)}, got {unit!r}")
    prices = raw.get("prices")
    if not isinstance(prices, dict) or not prices:
        raise ConfigError(f'{where}: {ep.id}: prices must map a resolution (or "*") to a USD price')
    if "*" not in prices:
        missing = [r for r in catalog.RESOLUTIONS if r not in prices]
        if missing or not ep.has_resolution:
            raise ConfigError(f"{where}: {ep.id}: prices need " + (", ".join(missing) if ep.has_resolution else '"*"'))
    try:
        prices_micro = {str(k): usd_to_micro(str(v)) for k, v in prices.items()}
        mults = {str(k): Decimal(str(v)) for k, v in (raw.get("duration_multipliers") or {}).items()}
        modifiers = tuple(
            Modifier(dict(m["when"]), Decimal(str(m["multiplier"])), bool(m.get("verified", True)))
            for m in raw.get("modifiers") or ()
        )
    except (ValueError, TypeError, KeyError, InvalidOperation) as exc:
        raise ConfigError(
            f"{where}: {ep.id}: bad price: {exc}", hint='write prices as quoted decimal strings, e.g. "0.06"'
        ) from exc
    evidence = raw.get("evidence")
    if evidence is not None and evidence not in EVIDENCE:
        raise ConfigError(f"{where}: {ep.id}: evidence must be one of {', '.join(EVIDENCE)}, got {evidence!r}")
    verified = bool(raw.get("verified", evidence in (None, VERIFIED_EVIDENCE)))
    if verified and evidence not in (None, VERIFIED_EVIDENCE):
        raise ConfigError(
            f"{where}: {ep.id}: verified: true needs evidence: {VERIFIED_EVIDENCE}, not {evidence!r}",
            hint="a price is verified only when a fal page states it",
        )
    return PriceEntry(
        ep.id, unit, prices_micro, mults, modifiers, verified, str(raw.get("source", "")), label, evidence
    )
