"""What a job's attempt is recorded as billed, by the decision's rule (outcome.Bill): fal's
billable units × fal's unit price when both are known, else our price table's figure, marked
provisional until fal's billing events confirm or correct it."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from decimal import Decimal

from .api.client import FalClient
from .domain import PENDING_BILLING_EVENTS, PROVISIONAL, usd_to_micro
from .errors import RemoteError
from .fal_prices import SyncedPrices, reserve
from .logs import get_logger
from .outcome import Bill
from .output import Delivered, Delivery
from .pricing import PriceTable
from .records import JobRecord

log = get_logger("worker")

PRICING_API = "fal pricing API"  # the billed amount is fal's billable units × its unit price


@dataclass(frozen=True)
class Billing:
    micro_usd: int
    units: str | None = None
    unit_price_micro_usd: int | None = None
    source: str | None = None


class Biller:
    """Prices billed outcomes; fal's unit prices are asked once per endpoint and process."""

    def __init__(
        self, client: FalClient, prices: PriceTable, delivery: Delivery, synced: SyncedPrices | None = None
    ) -> None:
        self.client, self.prices, self.delivery = client, prices, delivery
        self.synced = synced  # fal's prices from the last `prices sync`: our figure is the higher, as planned
        self._unit_prices: dict[str, tuple[Decimal, str]] = {}
        self._lock = threading.Lock()

    def bill(self, job: JobRecord, bill: Bill, units: Decimal | None, delivered: Delivered | None = None) -> Billing:
        """What to record as billed, by the decision's rule (see outcome.Bill)."""
        units_s = f"{units:f}" if units is not None else None
        if bill == Bill.NOTHING:
            return Billing(0, units_s)
        if bill == Bill.ASK:
            return Billing(0, units_s, source=PENDING_BILLING_EVENTS)
        if bill == Bill.UNITS and units is not None:
            price = self._unit_price(job.endpoint)
            if price is not None:
                return Billing(int((units * price).to_integral_value()), units_s, price, PRICING_API)
        # Not fal's figure (x-fal-billable-units is not documented for API users, fal's pricing
        # API did not answer): our price table's, marked provisional until fal's billing events
        # (admin key) confirm or correct it (resolve.Resolver._settle_bills).
        if bill == Bill.UNITS and delivered is not None:  # price what was delivered, as the plan reserved
            table = self.delivery.price_delivered(job, delivered.measured)
            est = reserve(table, self.prices.entry(job.endpoint), self.synced)
            return Billing(est.micro_usd, units_s, source=f"{PROVISIONAL}{est.price_table} on the verified output")
        return Billing(job.estimate_micro_usd, units_s, source=f"{PROVISIONAL}{job.price_table} (estimate)")

    def _unit_price(self, endpoint_id: str) -> int | None:
        with self._lock:
            if endpoint_id not in self._unit_prices:
                try:
                    self._unit_prices.update(self.client.unit_prices([endpoint_id]))
                except RemoteError as exc:
                    log.warning("pricing API unavailable (%s); billing from the price table", exc.message)
                    return None
            price = self._unit_prices.get(endpoint_id)
        return usd_to_micro(price[0]) if price else None


__all__ = ["PRICING_API", "Biller", "Billing"]
