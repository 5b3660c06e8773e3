"""Prometheus metrics of one worker process (`--metrics-port`): counters fed by the run's reporter
events, and gauges read from the job database on each scrape. No label names a job (bounded
cardinality); several processes each expose their own, and PromQL sums them (README)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .api.answers import CANCELLED_ERROR_TYPES, REJECTION_ERROR_TYPES, RETRYABLE_ERROR_TYPES
from .db.gauges import Gauges
from .domain import RunEvent, micro_to_usd
from .errors import BatchRunnerError
from .logs import get_logger
from .records import JobRecord

log = get_logger("metrics")

PREFIX = "batch_runner"
#: The `error_type` label's values: fal's documented error types (api/answers.py, from fal's
#: request-errors page, and content_policy_violation as outcome.py reads it), "other" for a type
#: outside them, "unknown" when fal named none.
ERROR_TYPES = RETRYABLE_ERROR_TYPES | REJECTION_ERROR_TYPES | CANCELLED_ERROR_TYPES | {"content_policy_violation"}
_LONGEST_FIRST = tuple(sorted(ERROR_TYPES, key=len, reverse=True))  # a type inside another's name loses
ERRORED = {
    RunEvent.RETRY,
    RunEvent.FOLLOW_LATER,
    RunEvent.FAILED,
    RunEvent.REJECTED,
    RunEvent.UNCERTAIN,
}
ENDED = {RunEvent.SUCCEEDED, RunEvent.FAILED, RunEvent.REJECTED, RunEvent.CANCELLED, RunEvent.UNCERTAIN}


def error_type(info: dict[str, Any]) -> str:
    """The bounded label for a fal error: the event's `error_type` when the worker passes one,
    else a known type named in its reason, else "other" (a type we do not know) or "unknown"."""
    given = info.get("error_type")
    if isinstance(given, str) and given:
        return given if given in ERROR_TYPES else "other"
    reason = str(info.get("error") or "")
    return next((t for t in _LONGEST_FIRST if t in reason), "unknown")


def usd(micro: int) -> float:
    """Prometheus samples are float64 by the exposition format: converted here, at the edge only,
    from the exact Decimal (every other figure stays integer micro-USD)."""
    return float(micro_to_usd(micro))


class DatabaseCollector(Collector):
    """Figures read from the job table on each scrape (one read transaction)."""

    def __init__(self, read: Callable[[str | None], Gauges], in_flight_cap: int) -> None:
        self.read, self.cap = read, in_flight_cap  # read(run name): db.gauges.read_gauges
        self.run_name: str | None = None  # set by the run's START event

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(f"{PREFIX}_database_up", "1 when the last scrape could read the job database")
        try:
            gauges = self.read(self.run_name)
        except BatchRunnerError as exc:
            log.warning("metrics: %s", exc.message)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._families(gauges)

    def _families(self, g: Gauges) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "Jobs in the database by state (every batch)", labels=["state"])
        for state, n in sorted(g.jobs_by_state.items()):
            jobs.add_metric([state], n)
        yield jobs
        yield GaugeMetricFamily(f"{PREFIX}_in_flight", "Requests in flight at fal (every worker)", value=g.in_flight)
        yield GaugeMetricFamily(f"{PREFIX}_in_flight_cap", "This process's cap on requests in flight", value=self.cap)
        yield GaugeMetricFamily(
            f"{PREFIX}_oldest_queued_age_seconds",
            "Seconds the longest-waiting queued job has been queued (0: none queued)",
            value=g.oldest_queued_age_s or 0.0,
        )
        limit = GaugeMetricFamily(f"{PREFIX}_budget_usd", "Each budget's limit, where set", labels=["budget"])
        spend = GaugeMetricFamily(
            f"{PREFIX}_spend_usd",
            "Spend against each budget: estimated, reserved (committed: billed, else reserved), billed",
            labels=["budget", "kind"],
        )
        for s in g.spend:
            if s.limit_micro_usd is not None:
                limit.add_metric([s.budget], usd(s.limit_micro_usd))
            for kind, micro in (
                ("estimated", s.estimated_micro_usd),
                ("reserved", s.reserved_micro_usd),
                ("billed", s.billed_micro_usd),
            ):
                spend.add_metric([s.budget, kind], usd(micro))
        yield limit
        yield spend


class Metrics:
    """This process's registry: event counters and the database collector."""

    def __init__(self, collector: DatabaseCollector) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.collector = collector
        self.registry.register(collector)
        r = self.registry
        self.submits = Counter(f"{PREFIX}_submits", "Requests submitted to fal", registry=r)
        self.retries = Counter(f"{PREFIX}_retries", "Jobs sent back to the queue for a new attempt", registry=r)
        self.errors = Counter(f"{PREFIX}_fal_errors", "fal errors met, by type", ["error_type"], registry=r)
        self.ended = Counter(f"{PREFIX}_jobs_ended", "Jobs this process ended, by state", ["state"], registry=r)
        self.outages = Counter(f"{PREFIX}_outages", "Times the circuit breaker opened", registry=r)
        self.breaker = Gauge(f"{PREFIX}_circuit_breaker_open", "1 while fal is unreachable (paused)", registry=r)
        self.download_bytes = Counter(f"{PREFIX}_download_bytes", "Output bytes downloaded", registry=r)
        self.download_seconds = Counter(f"{PREFIX}_download_seconds", "Seconds spent downloading", registry=r)
        self._server: Any = None

    def event(self, kind: RunEvent, job: JobRecord | None, **info: Any) -> None:
        """A reporter: count what the run tells its display."""
        if kind == RunEvent.START:
            self.collector.run_name = info.get("run")
        elif kind == RunEvent.SUBMITTED:
            self.submits.inc()
        elif kind == RunEvent.OUTAGE:
            self.outages.inc()
            self.breaker.set(1)
        elif kind == RunEvent.RESUMED:
            self.breaker.set(0)
        if kind == RunEvent.RETRY:
            self.retries.inc()
        if kind in ERRORED and info.get("error"):
            self.errors.labels(error_type(info)).inc()
        if kind in ENDED:
            self.ended.labels(kind.value).inc()
        if kind == RunEvent.SUCCEEDED:  # the worker reports each download's bytes and seconds
            self.download_bytes.inc(max(0, int(info.get("download_bytes") or 0)))
            self.download_seconds.inc(max(0.0, float(info.get("download_s") or 0.0)))

    def serve(self, addr: str, port: int) -> tuple[str, int]:
        """Serve /metrics on a daemon thread; returns the bound address (port 0 picks a free one)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        host, bound = server.server_address[:2]
        return str(host), int(bound)

    def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()  # returns within the serving loop's 0.5 s poll
            server.server_close()
