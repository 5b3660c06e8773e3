"""Webhook notifications: a run's end, a budget stop or warning, jobs left uncertain, fal unreachable
past a threshold. Each event is POSTed to every configured URL from a background thread, signed
(HMAC-SHA256 over `timestamp.body`, Stripe-style), retried with backoff; never blocking or failing
the run. Delivery failures are logged (URL without its query) and audited through `audit`."""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from .config import OpsSettings
from .domain import RunEvent
from .errors import BatchRunnerError
from .logs import get_logger
from .records import JobRecord

log = get_logger("notify")

SIGNATURE_HEADER = "X-Batch-Runner-Signature"  # t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">
EVENT_HEADER = "X-Batch-Runner-Event"
REPLAY_WINDOW_S = 300  # receivers should refuse a timestamp older (or newer) than this
ATTEMPTS = 5
BACKOFF_S = 0.5  # first wait between attempts; doubles each time
TIMEOUT_S = 5.0
FLUSH_S = 5.0  # the most `close` waits for deliveries still under way
UNCERTAIN_IDS_MAX = 20  # job ids listed in an `uncertain` event
UNCERTAIN_COALESCE_S = 10.0  # uncertain jobs met within this long go out as one event

RUN_FINISHED, BUDGET_STOP, BUDGET_WARNING = "run.finished", "budget.stop", "budget.warning"
UNCERTAIN, FAL_UNREACHABLE, FAL_REACHABLE = "jobs.uncertain", "fal.unreachable", "fal.reachable"

Audit = Callable[..., None]  # record_event(kind, **details)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: `t=<timestamp>,v1=<hex HMAC-SHA256 over "timestamp.body">`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, now: float, window_s: int = REPLAY_WINDOW_S) -> bool:
    """What a receiver does (the README shows it): the MAC matches and the timestamp is recent."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = sign(secret, t, body).split("v1=", 1)[1]
    return abs(now - t) <= window_s and hmac.compare_digest(expected, parts.get("v1", ""))


def redact_url(url: str) -> str:
    """A URL as it may be logged: scheme, host and path; never the query (tokens live there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def slack_text(event: dict[str, Any]) -> str:
    """One line of text for Slack-compatible incoming webhooks."""
    bits = [f"batch-runner {event['kind']}", f"run {event.get('run') or '-'}"]
    if event.get("counts"):
        bits.append(", ".join(f"{k} {v}" for k, v in sorted(event["counts"].items())))
    elif event.get("uncertain"):  # told mid-run, before the run's counts exist
        bits.append(f"uncertain {event['uncertain']}")
    if event.get("jobs"):
        more = " …" if event.get("uncertain", 0) > len(event["jobs"]) else ""
        bits.append("jobs " + ", ".join(str(j) for j in event["jobs"]) + more)
    if event.get("billed_usd") is not None:
        bits.append(f"billed ${event['billed_usd']}")
    if event.get("message"):
        bits.append(str(event["message"]))
    return ": ".join(bits[:2]) + (" — " + "; ".join(bits[2:]) if bits[2:] else "")


@dataclass(frozen=True)
class _Delivery:
    url: str
    kind: str
    body: bytes


class Notifier:
    """Queues events and delivers them on one background thread."""

    def __init__(self, settings: OpsSettings, audit: Audit, *, backoff_s: float = BACKOFF_S) -> None:
        self.urls, self.secret, self.fmt = settings.notify_urls, settings.notify_secret, settings.notify_format
        self.audit, self.backoff_s = audit, backoff_s
        self._queue: queue.Queue[_Delivery | None] = queue.Queue()
        self._deadline: float | None = None  # set by close: deliveries give up past it
        self._client = httpx.Client(timeout=TIMEOUT_S, follow_redirects=False)
        self._thread = threading.Thread(target=self._deliver_all, name="notify", daemon=True)
        self._thread.start()

    def send(self, kind: str, **fields: Any) -> None:
        """Queue one event for every URL; returns at once."""
        event = {"kind": kind, "time": datetime.now(UTC).isoformat(timespec="seconds"), **fields}
        payload = {"text": slack_text(event)} if self.fmt == "slack" else event
        body = json.dumps(payload, sort_keys=True, default=str).encode()
        for url in self.urls:
            self._queue.put(_Delivery(url, kind, body))

    def close(self, flush_s: float = FLUSH_S) -> None:
        """Deliver what is queued for at most `flush_s` seconds, then stop."""
        self._deadline = time.monotonic() + flush_s
        self._queue.put(None)
        self._thread.join(timeout=flush_s + 1)
        self._client.close()

    def _deliver_all(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._deliver(item)
            except Exception:  # a bug here must never touch the run
                log.exception("notification %s: unexpected error", item.kind)

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _deliver(self, item: _Delivery) -> None:
        delay = self.backoff_s
        for attempt in range(1, ATTEMPTS + 1):
            problem = self._post(item)
            if problem is None:
                return
            last = attempt == ATTEMPTS or self._past_deadline()
            where = redact_url(item.url)
            log.warning("notification %s to %s failed (attempt %d): %s", item.kind, where, attempt, problem)
            self._audit(item, where, attempt, problem, gave_up=last)
            if last:
                return
            wait = delay if self._deadline is None else min(delay, max(0.0, self._deadline - time.monotonic()))
            time.sleep(wait)
            delay *= 2

    def _post(self, item: _Delivery) -> str | None:
        """One POST; None when the receiver took it (2xx), else what went wrong (bounded)."""
        headers = {"Content-Type": "application/json", EVENT_HEADER: item.kind, "User-Agent": "batch-runner"}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret.reveal(), int(time.time()), item.body)
        try:
            resp = self._client.post(item.url, content=item.body, headers=headers)
        except httpx.HTTPError as exc:
            return type(exc).__name__
        return None if 200 <= resp.status_code < 300 else f"HTTP {resp.status_code}"

    def _audit(self, item: _Delivery, where: str, attempt: int, problem: str, *, gave_up: bool) -> None:
        try:
            self.audit("notify.failed", event=item.kind, url=where, attempt=attempt, error=problem, gave_up=gave_up)
        except BatchRunnerError as exc:
            log.warning("could not audit a failed notification: %s", exc.message)


class NotifyingReporter:
    """A reporter: turns the run's events into notifications (budget warning, outage past the
    threshold, jobs left uncertain, coalesced); the run's end and a budget stop come from `run_ended`."""

    def __init__(self, notifier: Notifier, outage_after_s: float, *, coalesce_s: float = UNCERTAIN_COALESCE_S) -> None:
        self.notifier, self.outage_after_s, self.coalesce_s = notifier, outage_after_s, coalesce_s
        self.run: str | None = None
        self._lock = threading.Lock()
        self._outage: threading.Timer | None = None
        self._outage_said = False
        self._uncertain: list[int] = []  # met and not yet sent
        self._uncertain_sent: set[int] = set()
        self._flush: threading.Timer | None = None

    def event(self, kind: RunEvent, job: JobRecord | None, **info: Any) -> None:
        if kind == RunEvent.START:
            self.run = info.get("run")
        elif kind == RunEvent.WARNING and _is_budget_warning(info):
            self.notifier.send(BUDGET_WARNING, run=self.run, message=str(info.get("message")))
        elif kind == RunEvent.OUTAGE:
            with self._lock:
                if self._outage is None:
                    message = str(info.get("message") or "")
                    self._outage = threading.Timer(self.outage_after_s, self._outage_lasted, [message])
                    self._outage.daemon = True
                    self._outage.start()
        elif kind == RunEvent.RESUMED:
            self._resumed(str(info.get("message") or ""))
        elif kind == RunEvent.UNCERTAIN and job is not None:
            with self._lock:
                self._uncertain.append(job.id)
                if self._flush is None:
                    self._flush = threading.Timer(self.coalesce_s, self._send_uncertain)
                    self._flush.daemon = True
                    self._flush.start()

    def _send_uncertain(self, extra_ids: tuple[int, ...] = (), **common: Any) -> None:
        """One `jobs.uncertain` event for the uncertain jobs not told yet."""
        with self._lock:
            ids = [i for i in dict.fromkeys([*self._uncertain, *extra_ids]) if i not in self._uncertain_sent]
            self._uncertain_sent.update(ids)
            self._uncertain, timer, self._flush = [], self._flush, None
        if timer is not None:
            timer.cancel()
        if ids:
            fields = {"run": self.run, **common}
            self.notifier.send(UNCERTAIN, **fields, uncertain=len(ids), jobs=ids[:UNCERTAIN_IDS_MAX])

    def _outage_lasted(self, message: str) -> None:
        with self._lock:
            self._outage_said = True
        self.notifier.send(
            FAL_UNREACHABLE, run=self.run, message=f"unreachable for over {self.outage_after_s:g} s: {message}"
        )

    def _resumed(self, message: str | None) -> None:
        """fal answers again (None: the run ended, so whether it does is unknown: nothing is said)."""
        with self._lock:
            timer, said = self._outage, self._outage_said
            self._outage, self._outage_said = None, False
        if timer is not None:
            timer.cancel()
        if said and message is not None:
            self.notifier.send(FAL_REACHABLE, run=self.run, message=message)

    def run_ended(self, summary: dict[str, Any]) -> None:
        """The run's summary (RunSummary.to_json): its end, a budget stop, uncertain jobs not told yet."""
        self._resumed(None)  # an outage timer still running dies with the run
        common = {
            "run": summary.get("run"),
            "batches": summary.get("batches"),
            "counts": summary.get("jobs"),
            "estimated_usd": summary.get("estimated_cost_usd"),
            "billed_usd": summary.get("billed_cost_usd"),
            "budget_usd": summary.get("budget_usd"),
        }
        self.notifier.send(
            RUN_FINISHED, **common, stopped_by=summary.get("stopped_by"), exit_code=summary.get("exit_code")
        )
        if summary.get("stopped_by") == "budget":
            self.notifier.send(
                BUDGET_STOP, **common, scope=summary.get("budget_stop_scope"), not_run=summary.get("not_run")
            )
        left = tuple(f["job"] for f in summary.get("failed") or () if f.get("state") == "uncertain")
        self._send_uncertain(left, **common)


def _is_budget_warning(info: dict[str, Any]) -> bool:
    """The pool's budget warning (the claim that crosses the run's threshold), flagged by the pool."""
    return bool(info.get("budget_warning"))
