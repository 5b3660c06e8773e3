"""The worker pool: claim → upload → submit → follow → download → verify → record, per job.

Threads share one FalClient and one JobQueue. The database decides who does what (claims with
leases; one claim at a time through the dispatch lock), so any number of processes on any
number of machines can run pools against one database.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Protocol

from . import catalog, probe
from .api.client import FalClient
from .api.transport import RetryPolicy
from .db.queue import BudgetStop, Claim, JobQueue, LeaseLost, RunInfo
from .domain import JobState, ProbeResult, format_usd, usd_to_micro
from .errors import (
    AccountLockedError, AmbiguousSubmitError, AuthError, BatchRunnerError, InputRejectedError, ProbeError,
    RemoteError, TransientRemoteError,
)
from .logs import get_logger
from .pricing import PriceTable

log = get_logger("worker")

#: fal error types after which a new attempt may succeed (reference §7); anything else is terminal.
RETRYABLE_ERROR_TYPES = frozenset({
    "runner_disconnected", "runner_connection_timeout", "runner_connection_refused", "runner_scheduling_failure",
    "request_timeout", "startup_timeout", "internal_server_error", "server_error",
})
REJECTION_ERROR_TYPES = frozenset({"validation_error", "value_error", "missing", "enum", "file_download_error",
                                   "string_too_long"})
UPLOAD_TTL_S = 6 * 24 * 3600.0
PRICING_API = "fal pricing API"  # the billed amount is fal's billable units × its unit price  # fal keeps uploads at least 7 days; re-upload a day early


@dataclass(frozen=True)
class PoolSettings:
    concurrency: int = 2  # threads, and the in-flight cap unless max_in_flight says otherwise
    max_in_flight: int | None = None
    lease_s: float = 60.0
    max_attempts: int = 3  # automatic attempts per job for retryable failures
    retry_delay_s: float = 20.0  # first wait before a new attempt; doubles each time
    poll_min_s: float = 1.0  # adaptive polling when the status stream is unavailable
    poll_max_s: float = 15.0
    idle_s: float = 0.5  # how often an idle worker looks for work at first...
    idle_max_s: float = 5.0  # ...doubling while it finds none (many idle workers, one dispatch lock)
    duration_tolerance_s: Decimal = Decimal("0.25")
    probe_timeout_s: float = 30.0
    cancel_on_exit: bool = False
    account_daily_micro_usd: int | None = None  # BATCH_RUNNER_MAX_USD_PER_DAY: every batch, rolling 24 h
    burst: bool = True  # exit when nothing is left (run); False keeps waiting (work)
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def in_flight_cap(self) -> int:
        return self.max_in_flight or self.concurrency


class Reporter(Protocol):
    def event(self, kind: str, job: dict[str, Any], **info: Any) -> None: ...


class NullReporter:
    def event(self, kind: str, job: dict[str, Any], **info: Any) -> None:
        pass


class Worker:
    """Takes one claimed job to its end (or back to the queue) and records every step."""

    def __init__(self, queue: JobQueue, client: FalClient, prices: PriceTable, settings: PoolSettings,
                 reporter: Reporter, source_probe: Callable[[dict[str, Any]], ProbeResult | None],
                 stop: threading.Event) -> None:
        self.queue, self.client, self.prices, self.settings = queue, client, prices, settings
        self.reporter, self.source_probe, self.stop = reporter, source_probe, stop
        self._unit_prices: dict[str, tuple[Decimal, str]] = {}
        self._upload_locks: dict[str, threading.Lock] = {}
        self._uploaded: dict[str, str] = {}  # content sha256 → URL, for this process
        self._digests: dict[str, str] = {}  # file fingerprint → content sha256
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ entry

    def process(self, claim: Claim) -> None:
        job = claim.job
        try:
            if claim.kind == "submit" and not self._submit(claim):
                return
            self._follow(claim)
        except LeaseLost as exc:  # this worker stalled past its lease and another took the job over
            log.warning("%s", exc)
            self.reporter.event("lost", job, error=str(exc))
        except (AccountLockedError, AuthError):
            raise
        except BatchRunnerError as exc:  # a database or file problem in the middle: leave it resumable
            log.error("job %s: %s", job["id"], exc)
            self.reporter.event("error", job, error=str(exc))
            raise

    # ------------------------------------------------------------------ submit

    def _submit(self, claim: Claim) -> bool:
        job = claim.job
        ep = catalog.endpoint(job["endpoint"])
        try:
            if job["source_fingerprint"] and not probe.is_url(job["source"] or "") \
                    and probe.fingerprint(job["source"]) != job["source_fingerprint"]:
                self.queue.finish(claim, JobState.FAILED, "the source changed after it was planned and priced; "
                                  "enqueue the manifest again to plan the new version", billed_micro_usd=0)
                self.reporter.event("failed", job, error="source changed since planning")
                return False
            payload = self._with_uploads(ep, json.loads(job["input_json"]))
        except (OSError, ProbeError) as exc:
            self.queue.finish(claim, JobState.FAILED, f"source unreadable: {exc}", billed_micro_usd=0)
            self.reporter.event("failed", job, error=str(exc))
            return False
        except TransientRemoteError as exc:
            self._retry_or_fail(claim, f"upload failed: {exc.message}", sent=False)
            return False
        if self.stop.is_set():
            self.queue.release(claim, unsent=True)
            return False
        self.queue.sending(claim)
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        try:
            sub = self.client.submit(ep.id, payload)
        except AmbiguousSubmitError as exc:
            self.queue.uncertain(claim, exc.message)
            self.reporter.event("uncertain", job, error=exc.message)
            return False
        except InputRejectedError as exc:
            self.queue.finish(claim, JobState.REJECTED, exc.message, billed_micro_usd=0)
            self.reporter.event("rejected", job, error=exc.message)
            return False
        except (AccountLockedError, AuthError):
            self.queue.release(claim, unsent=True)
            raise
        except TransientRemoteError as exc:
            self._retry_or_fail(claim, f"not accepted: {exc.message}", sent=False)
            return False
        except RemoteError as exc:
            self.queue.finish(claim, JobState.FAILED, exc.message, billed_micro_usd=0)
            self.reporter.event("failed", job, error=exc.message)
            return False
        self.queue.submitted(claim, sub.request_id, sub.status_url, sub.response_url, sub.cancel_url, digest)
        self.reporter.event("submitted", job, request_id=sub.request_id, position=sub.queue_position)
        return True

    def _with_uploads(self, ep: catalog.Endpoint, payload: dict[str, Any]) -> dict[str, Any]:
        """Local media paths become fal storage URLs, each file uploaded once (by content hash)."""
        out = dict(payload)
        for name in ep.media_fields:
            value = out.get(name)
            if isinstance(value, str) and not value.startswith(("http://", "https://", "data:")):
                out[name] = self._upload(Path(value))
            elif isinstance(value, list):
                out[name] = [self._upload(Path(v)) if isinstance(v, str) and not v.startswith(
                    ("http://", "https://", "data:")) else v for v in value]
        return out

    def _upload(self, path: Path) -> str:
        fp = probe.fingerprint(str(path))
        with self._lock:
            digest = self._digests.get(fp)
        if digest is None:
            digest = _sha256(path)
            with self._lock:
                self._digests[fp] = digest
        with self._lock:
            known = self._uploaded.get(digest)
            lock = self._upload_locks.setdefault(digest, threading.Lock())
        if known is not None:
            return known
        with lock:  # two threads with the same source upload it once
            with self._lock:
                known = self._uploaded.get(digest)
            if known is not None:
                return known
            base = self.client.hosts.cdn
            url = self.queue.cached_upload(digest, base)
            if url is None:
                url = self.client.upload(path)
                self.queue.store_upload(digest, base, url, path.stat().st_size, UPLOAD_TTL_S)
            with self._lock:
                self._uploaded[digest] = url
            return url

    # ------------------------------------------------------------------ follow

    def _follow(self, claim: Claim) -> None:
        job, attempt = claim.job, claim.attempt
        if job["state"] == JobState.DOWNLOADING.value:
            status: dict[str, Any] | None = {"status": "COMPLETED"}
        else:
            status = self._wait_completed(claim)
        if status is None:  # stopping
            self._leave(claim)
            return
        error_type = status.get("error_type")
        result = self.client.result(attempt["response_url"])
        units, unit_price, billed = self._billing(job, result.billable_units)
        if status.get("error") is not None or not result.ok:
            self._failed_run(claim, status, result.status_code, result.body, error_type, billed, units, unit_price)
            return
        self._deliver(claim, result.body, billed, units, unit_price, from_api=result.billable_units is not None
                      and unit_price is not None)

    def _wait_completed(self, claim: Claim) -> dict[str, Any] | None:
        """Follow the status stream to COMPLETED; fall back to adaptive polling if it breaks."""
        url = claim.attempt["status_url"]
        verbose = log.isEnabledFor(20)
        try:
            for event in self.client.stream(url, logs=verbose):
                self._on_status(claim, event)
                if event.get("status") == "COMPLETED":
                    return event
            if self.stop.is_set():
                return None
        except TransientRemoteError as exc:
            log.info("job %s: status stream unavailable (%s); polling", claim.job["id"], exc.message)
        interval = self.settings.poll_min_s
        last = None
        while not self.stop.is_set():
            event = self.client.status(url, logs=verbose)
            self._on_status(claim, event)
            if event.get("status") == "COMPLETED":
                return event
            changed = (event.get("status"), event.get("queue_position")) != last
            last = (event.get("status"), event.get("queue_position"))
            interval = self.settings.poll_min_s if changed else min(interval * 1.5, self.settings.poll_max_s)
            self.stop.wait(interval)
        return None

    def _on_status(self, claim: Claim, event: dict[str, Any]) -> None:
        state = event.get("status")
        if state == "IN_QUEUE":
            self.reporter.event("queued", claim.job, position=event.get("queue_position"))
        elif state == "IN_PROGRESS":
            self.queue.progress(claim, JobState.IN_PROGRESS)
            for entry in event.get("logs") or ():
                self.reporter.event("log", claim.job, message=entry.get("message"))

    def _leave(self, claim: Claim) -> None:
        """Stopping: cancel the remote request if asked to, else leave it to be followed later."""
        if self.settings.cancel_on_exit and claim.attempt.get("cancel_url"):
            try:
                answer = self.client.cancel(claim.attempt["cancel_url"])
            except RemoteError as exc:  # still running at fal, and may bill: leave it to be followed
                self.reporter.event("error", claim.job, error=f"cancel failed, left to follow: {exc.message}")
                self.queue.release(claim)
                return
            if settle_cancel(self.queue, claim, answer):
                self.reporter.event("cancelled", claim.job)
        else:
            self.queue.release(claim)

    def _billing(self, job: dict[str, Any], units: Decimal | None) -> tuple[str | None, int | None, int]:
        """What fal billed: its billable units × its unit price; without units, our estimate."""
        if units is None:
            return None, None, job["estimate_micro_usd"]
        price = self._unit_price(job["endpoint"])
        if price is None:
            return f"{units:f}", None, job["estimate_micro_usd"]
        return f"{units:f}", price, int((units * price).to_integral_value())

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

    def _failed_run(self, claim: Claim, status: dict[str, Any], code: int, body: Any, error_type: str | None,
                    billed: int, units: str | None, unit_price: int | None) -> None:
        job = claim.job
        message = status.get("error") or _detail(body) or f"result HTTP {code}"
        billed = billed if units is not None else 0  # fal bills failures only when it says so
        reason = f"{error_type or 'error'}: {message}"
        if error_type == "request_cancelled":
            self.queue.finish(claim, JobState.CANCELLED, reason, billed_micro_usd=billed, billable_units=units)
            self.reporter.event("cancelled", job)
        elif code == 404 and status.get("error") is None:
            # Completed and billed, but the result expired before we collected it: money wasted.
            self.queue.finish(claim, JobState.FAILED, f"result expired before download: {message}",
                              billed_micro_usd=job["estimate_micro_usd"])
            self.reporter.event("failed", job, error="result expired")
        elif (error_type in RETRYABLE_ERROR_TYPES or code >= 500) and billed == 0:
            self._retry_or_fail(claim, reason, sent=True)
        elif error_type in REJECTION_ERROR_TYPES or (code == 422 and error_type != "content_policy_violation"):
            self.queue.finish(claim, JobState.REJECTED, reason, billed_micro_usd=billed, billable_units=units,
                              unit_price_micro_usd=unit_price)
            self.reporter.event("rejected", job, error=reason)
        else:
            self.queue.finish(claim, JobState.FAILED, reason, billed_micro_usd=billed, billable_units=units,
                              unit_price_micro_usd=unit_price)
            self.reporter.event("failed", job, error=reason)

    def _retry_or_fail(self, claim: Claim, reason: str, *, sent: bool) -> None:
        number = claim.attempt["number"]
        if number >= self.settings.max_attempts:
            self.queue.finish(claim, JobState.FAILED, f"{reason} (after {number} attempts)", billed_micro_usd=0)
            self.reporter.event("failed", claim.job, error=reason)
            return
        delay = self.settings.retry_delay_s * 2 ** (number - 1)
        self.queue.requeue(claim, reason, delay_s=delay, sent=sent)
        self.reporter.event("retry", claim.job, error=reason, delay_s=delay)

    # ------------------------------------------------------------------ deliver

    def _deliver(self, claim: Claim, body: Any, billed: int, units: str | None, unit_price: int | None,
                 *, from_api: bool) -> None:
        job = claim.job
        source = PRICING_API if from_api else f"{job['price_table']} (estimate)"
        video = (body or {}).get("video") or {}
        if not video.get("url"):
            self.queue.finish(claim, JobState.FAILED, "the result has no video URL", billed_micro_usd=billed,
                              billable_units=units, unit_price_micro_usd=unit_price)
            return
        self.queue.progress(claim, JobState.DOWNLOADING)
        target = Path(job["output_path"])
        target.parent.mkdir(parents=True, exist_ok=True)
        # per attempt and process: a worker that took this job over never writes into a dead one's file
        tmp = target.with_name(f".{target.name}.{claim.attempt['number']}.{os.getpid()}.part")
        try:
            sha, size = self.client.download(video["url"], tmp)
        except TransientRemoteError as exc:
            tmp.unlink(missing_ok=True)
            self.queue.finish(claim, JobState.FAILED, f"download failed: {exc.message}", billed_micro_usd=billed,
                              billable_units=units, unit_price_micro_usd=unit_price)
            self.reporter.event("failed", job, error="download failed")
            return
        problem, measured = self._verify(job, tmp)
        if not from_api and not problem:  # no billable units from fal: price what was delivered
            billed, source = self._price_delivered(job, measured)
        if problem:
            aside = target.with_name(f"{target.stem}.rejected{target.suffix}")
            tmp.replace(aside)
            self.queue.finish(claim, JobState.FAILED, f"output check failed: {problem} (kept at {aside})",
                              billed_micro_usd=billed, billable_units=units, unit_price_micro_usd=unit_price,
                              price_source=source)
            self.reporter.event("failed", job, error=problem)
            return
        tmp.replace(target)  # atomic: the output appears whole or not at all
        for stale in target.parent.glob(f".{glob.escape(target.name)}.*.part"):  # left by a worker that died downloading
            stale.unlink(missing_ok=True)
        sidecar = {
            "endpoint": job["endpoint"], "input": json.loads(job["input_json"]), "request_id": claim.attempt["request_id"],
            "attempt": claim.attempt["number"], "job_key": job["key"], "source": job["source"],
            "source_fingerprint": job["source_fingerprint"], "output": str(target), "sha256": sha, "size_bytes": size,
            "width": measured.width, "height": measured.height,
            "duration_s": str(measured.duration) if measured.duration is not None else None,
            "estimated_cost_usd": format_usd(job["estimate_micro_usd"]), "billed_cost_usd": format_usd(billed),
            "billable_units": units, "price_table": job["price_table"], "billed_price_source": source,
        }
        target.with_name(target.name + ".json").write_text(json.dumps(sidecar, indent=2, sort_keys=True))
        self.queue.finish(claim, JobState.SUCCEEDED, None, billed_micro_usd=billed, billable_units=units,
                          unit_price_micro_usd=unit_price, price_source=source,
                          output={"path": str(target), "sha256": sha, "size_bytes": size, "width": measured.width,
                                  "height": measured.height,
                                  "duration_us": int(measured.duration * 1_000_000) if measured.duration else None})
        self.reporter.event("succeeded", job, billed_micro_usd=billed)

    def _price_delivered(self, job: dict[str, Any], measured: ProbeResult) -> tuple[int, str]:
        """The price table applied to a verified delivery, by the endpoint's billing unit: per
        started source second on the source's probed length (as fal bills it), per second on
        the output's measured length, per video on its parameters alone."""
        ep = catalog.endpoint(job["endpoint"])
        src = self.source_probe(job)
        if ep.billing == catalog.PER_STARTED_SOURCE_SECOND and src is not None:
            duration = src.duration
        elif ep.billing == catalog.PER_VIDEO:
            duration = None
        else:
            duration = measured.duration
        est = self.prices.estimate(ep, json.loads(job["input_json"]), duration)
        return est.micro_usd, f"{est.price_table} on the verified output"

    def _verify(self, job: dict[str, Any], path: Path) -> tuple[str | None, ProbeResult]:
        """ffprobe the download and compare it with what the request promised."""
        try:
            got = probe.probe(str(path), "video", f"file:{path}", timeout_s=self.settings.probe_timeout_s)
        except ProbeError as exc:
            dummy = ProbeResult(str(path), "", "video", None, 0, 0, None, "", 0, False, None)
            return f"unreadable video: {exc.message}", dummy
        ep = catalog.endpoint(job["endpoint"])
        src = self.source_probe(job)
        try:
            want = catalog.expected_output(ep, json.loads(job["input_json"]), src.display_size if src else None,
                                           src.duration if src else None)
        except ValueError as exc:
            return f"cannot check the output: {exc}", got
        width, height = got.display_size
        if (width, height) != (want.width, want.height):
            return f"expected {want.width}x{want.height}, got {width}x{height}", got
        if got.duration is None or abs(got.duration - want.duration) > self.settings.duration_tolerance_s:
            return f"expected {want.duration} s, got {got.duration} s", got
        return None, got


def settle_cancel(queue: JobQueue, claim: Claim, answer: str) -> bool:
    """Record fal's answer to a cancel. `OK` (the request was still queued: it never runs and
    never bills) ends the job now. Any other answer (CANCELLATION_REQUESTED: the model may still
    finish and bill; ALREADY_COMPLETED) leaves the job to be followed to its real end."""
    if answer == "OK":
        queue.cancel_followed(claim, answer)
        return True
    queue.cancel_requested(claim, answer)
    return False


def pid_namespace() -> str | None:
    """This process's pid namespace (Linux), e.g. 4026531836; None where there is none to read."""
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return None
    digits = "".join(ch for ch in link if ch.isdigit())
    return digits or None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _detail(body: Any) -> str | None:
    if isinstance(body, dict):
        d = body.get("detail")
        if isinstance(d, list) and d and isinstance(d[0], dict):
            return str(d[0].get("msg"))
        if d:
            return str(d)
    return None


# ---------------------------------------------------------------------- the pool


@dataclass
class PoolOutcome:
    budget_stop: BudgetStop | None = None
    fatal: BatchRunnerError | None = None
    interrupted: bool = False


class Pool:
    """N threads claiming and processing jobs, plus a heartbeat thread for the leases."""

    def __init__(self, queue: JobQueue, worker: Worker, run: RunInfo, batches: list[str] | None,
                 settings: PoolSettings, stop: threading.Event) -> None:
        self.queue, self.worker, self.run, self.batches = queue, worker, run, batches
        self.settings, self.stop = settings, stop
        self.outcome = PoolOutcome()
        self._draining = threading.Event()  # budget stop: follow what is in flight, submit nothing new
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._finished = 0  # jobs this process has taken as far as it could

    def run_until_done(self) -> PoolOutcome:
        self.queue.expire_dead_local_leases(_pid_alive)
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        threads = [threading.Thread(target=self._loop, name=f"worker-{i}", daemon=True)
                   for i in range(self.settings.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.5)
        self._done.set()
        beat.join(timeout=5)
        self.outcome.interrupted = self.stop.is_set() and self.outcome.fatal is None
        return self.outcome

    def _heartbeat(self) -> None:
        """Renew this worker's leases, and end those of dead workers on this machine (workers on
        other machines are taken over when their leases run out)."""
        while not self._done.wait(self.settings.lease_s / 3):
            try:
                self.queue.heartbeat()
                self.queue.expire_dead_local_leases(_pid_alive)
            except BatchRunnerError as exc:
                log.warning("heartbeat failed: %s", exc)

    def _loop(self) -> None:
        idle = 0  # claims in a row that found nothing
        while not self.stop.is_set() and self.outcome.fatal is None:
            try:
                claim = self.queue.claim(self.run.id, self.batches, self.settings.in_flight_cap,
                                         follow_only=self._draining.is_set(),
                                         account_daily_micro_usd=self.settings.account_daily_micro_usd)
            except BatchRunnerError as exc:
                self._fail(exc)
                return
            if isinstance(claim, BudgetStop):
                with self._lock:
                    self.outcome.budget_stop = self.outcome.budget_stop or claim
                self._draining.set()
                continue
            if claim is None:
                if not self._wait_for_work(idle):
                    return
                idle += 1
                continue
            idle = 0
            if claim.warning:
                self.worker.reporter.event("warning", claim.job, message=claim.warning)
            try:
                self.worker.process(claim)
                self._finished += 1  # wakes idle threads: a slot is free, or the batch may be done
            except (AccountLockedError, AuthError) as exc:
                self._fail(exc)
                return
            except BatchRunnerError as exc:
                self._fail(exc)
                return

    def _fail(self, exc: BatchRunnerError) -> None:
        if self.outcome.fatal is None:
            self.outcome.fatal = exc
        self.stop.set()

    def _wait_for_work(self, idle: int) -> bool:
        """False when this thread should exit (burst mode and nothing left for it). Otherwise wait:
        longer the longer nothing was found, so idle workers do not hammer the dispatch lock."""
        remaining = self.queue.remaining(self.batches)
        active = sum(n for s, n in remaining.items() if s != JobState.QUEUED.value)
        queued = remaining.get(JobState.QUEUED.value, 0)
        if self.settings.burst and active == 0 and (queued == 0 or self._draining.is_set()):
            return False
        wait = min(self.settings.idle_s * 2 ** min(idle, 10), max(self.settings.idle_s, self.settings.idle_max_s))
        if queued and not active and not self._draining.is_set():
            due = self.queue.next_retry_at(self.batches)
            if due is not None:
                wait = max(self.settings.idle_s, min((due - datetime.now(timezone.utc)).total_seconds(), 30.0))
        seen, deadline = self._finished, time.monotonic() + wait
        while not self.stop.wait(min(self.settings.idle_s, max(0.0, deadline - time.monotonic()))):
            if self._finished != seen or time.monotonic() >= deadline:
                break
        return True
