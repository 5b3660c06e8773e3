"""One job: claim → upload → submit → follow → result → hand to delivery → deliver → record once.

`Worker.process` holds a fal slot (submit until fal's answer is known) and returns a `Handoff`
for the pool's delivery stage, which calls `Worker.deliver` without the slot. Every fal answer,
and every call that failed after its retries, goes through `outcome.decide`; `Worker._record`
turns that one decision into one recorded transition.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from . import catalog, probe, storage
from .api.answers import Completed, InProgress, Phase, Queued, Reply, Status, input_sha256
from .api.client import FalClient
from .billing import Biller, Billing
from .db.queue import JobQueue
from .db.transition import Claim, ClaimKind, Transitions
from .domain import JobState, RunEvent, is_remote
from .errors import AccountLockedError, AuthError, LeaseLostError, ProbeError, RemoteError
from .fal_prices import SyncedPrices
from .logs import bind_log_context, get_logger
from .outcome import Action, Bill, Decision, decide, decide_cancel, decide_result, with_attempts
from .output import Delivery, NotDelivered, sidecar
from .pricing import PriceTable
from .records import JobRecord
from .uploads import Uploads

log = get_logger("worker")


class WorkerSettings(Protocol):
    """What the worker reads of the pool's settings; read-only, so a frozen dataclass fits."""

    @property
    def max_attempts(self) -> int: ...
    @property
    def retry_delay_s(self) -> float: ...
    @property
    def follow_later_s(self) -> float: ...
    @property
    def poll_min_s(self) -> float: ...
    @property
    def poll_max_s(self) -> float: ...
    @property
    def cancel_on_exit(self) -> bool: ...
    @property
    def store_url_lifetime_s(self) -> int: ...


class Reporter(Protocol):
    def event(self, kind: RunEvent, job: JobRecord | None, **info: Any) -> None: ...


class NullReporter:
    def event(self, kind: RunEvent, job: JobRecord | None, **info: Any) -> None:
        pass


class OutageSignal(Protocol):
    """The pool's circuit breaker: told of every call that failed for reasons not the job's own."""

    def failure(self, reason: str) -> None: ...

    def success(self) -> None: ...


class _StatusFailedError(Exception):
    """fal's status could not be read after its retries, with the claim as it was then."""

    def __init__(self, claim: Claim, error: RemoteError) -> None:
        super().__init__(error.message)
        self.claim, self.error = claim, error


@dataclass(frozen=True)
class Handoff:
    """A job whose output fal made: recorded as DOWNLOADING with fal's output URL (so a stop
    leaves it resumable), for the delivery stage. It keeps its lease, and no fal slot."""

    claim: Claim
    url: str
    units: Decimal | None = None
    keep: bool = False  # a paid output fetched again: its money stays as recorded
    bill: Bill = Bill.UNITS


class Worker:
    """Takes one claimed job to its end (or back to the queue) and records every step."""

    def __init__(
        self,
        queue: JobQueue,
        client: FalClient,
        prices: PriceTable,
        settings: WorkerSettings,
        reporter: Reporter,
        delivery: Delivery,
        stop: threading.Event,
        breaker: OutageSignal | None = None,
        synced: SyncedPrices | None = None,
    ) -> None:
        self.queue, self.client, self.prices, self.settings = queue, client, prices, settings
        self.reporter, self.delivery, self.stop = reporter, delivery, stop
        self.breaker = breaker
        self.biller = Biller(client, prices, delivery, synced)
        self.uploads = Uploads(client, queue)

    # ------------------------------------------------------------------ entry

    def process(self, claim: Claim, sent: Callable[[], None] | None = None) -> Handoff | None:
        """Submit (or follow) a claimed job until fal's outcome is known: the output to deliver,
        or None when the job ended here (or was left for later). `sent` is called once the submit
        has fal's answer (or will not be sent)."""
        try:
            if claim.kind == ClaimKind.SUBMIT:
                try:
                    submitted = self._submit(claim)
                finally:
                    if sent is not None:
                        sent()
                if submitted is None:
                    return None
                claim = submitted
            return self._follow(claim)
        except LeaseLostError as exc:  # this worker stalled past its lease and another took the job over
            self._lost(claim, exc)
            return None

    def deliver(self, handoff: Handoff) -> None:
        """Download, verify, bill, write the sidecar, publish and record a handed-off job."""
        try:
            self._deliver(handoff)
        except LeaseLostError as exc:
            self._lost(handoff.claim, exc)

    def prefetch(self, job: JobRecord) -> None:
        """Upload a queued job's local media before it is claimed (the upload cache keeps the
        URLs), so its submit is a few writes and one POST. Claims nothing, records nothing."""
        if not _source_changed(job):  # a changed source fails its job at the claim, unuploaded
            self._with_uploads(catalog.endpoint(job.endpoint), job.params)

    def _lost(self, claim: Claim, exc: LeaseLostError) -> None:
        log.warning("%s", exc)
        self.reporter.event(RunEvent.LOST, claim.job, error=str(exc))

    # ------------------------------------------------------------------ recording: one place

    def _record(
        self, claim: Claim, decision: Decision, billing: Billing | None = None, *, output_url: str | None = None
    ) -> None:
        """Turn one decision into one recorded transition, and tell the reporter."""
        job, action, reason = claim.job, decision.action, decision.reason
        bill = billing or Billing(0)
        if action == Action.NEW_ATTEMPT:
            decision = with_attempts(decision, self.queue.failed_attempts(claim), self.settings.max_attempts)
            action, reason = decision.action, decision.reason
        if action in (Action.NEW_ATTEMPT, Action.REQUEUE_UNSENT):
            sent = action == Action.NEW_ATTEMPT
            tries = claim.attempt.number - job.retry_base
            delay = self.settings.retry_delay_s * 2 ** max(0, tries - 1) if sent else self.settings.follow_later_s
            self.queue.requeue(claim, reason, delay_s=delay, sent=sent)
            self.reporter.event(RunEvent.RETRY, job, error=reason, delay_s=delay)
        elif action == Action.FOLLOW_LATER:
            self.queue.follow_later(claim, reason, delay_s=self.settings.follow_later_s)
            self.reporter.event(RunEvent.FOLLOW_LATER, job, error=reason)
        elif action == Action.UNCERTAIN:
            self.queue.uncertain(claim, reason)
            self.reporter.event(RunEvent.UNCERTAIN, job, error=reason)
        elif action in (Action.FAILED, Action.REJECTED, Action.CANCELLED, Action.UNDELIVERED):
            state = {Action.REJECTED: JobState.REJECTED, Action.CANCELLED: JobState.CANCELLED}.get(
                action, JobState.FAILED
            )
            self.queue.finish(
                claim,
                state,
                reason,
                billed_micro_usd=bill.micro_usd,
                billable_units=bill.units,
                unit_price_micro_usd=bill.unit_price_micro_usd,
                price_source=bill.source,
                output_url=output_url,
                keep_billed=decision.bill == Bill.KEEP,
            )
            self.reporter.event(RunEvent(state.value), job, error=reason, billed_micro_usd=bill.micro_usd)
        elif action == Action.ACCOUNT:
            raise AssertionError("account decisions are raised, not recorded")

    def _account(self, claim: Claim, exc: RemoteError, *, sent: bool) -> None:
        """fal refused the key or locked the account: keep the job as it is, stop the pool."""
        if sent:
            self.queue.follow_later(claim, exc.message, delay_s=self.settings.follow_later_s)
        else:
            self.queue.release(claim, unsent=True)
        raise exc if isinstance(exc, (AuthError, AccountLockedError)) else AuthError(exc.message, hint="check FAL_KEY")

    def _fal_answered(self, outage: Decision | None = None) -> None:
        """Tell the circuit breaker how fal answered: only fal's answers (or their absence) count,
        never a job's own trouble (a changed source, a full disk)."""
        if self.breaker is not None:
            self.breaker.failure(outage.reason) if outage is not None and outage.outage else self.breaker.success()

    def _failed_call(
        self, claim: Claim, phase: Phase, exc: RemoteError, *, sent: bool, completed: Completed | None = None
    ) -> Decision:
        """A call that raised after its retries: decide, and stop here on an account problem."""
        reply = exc.reply if isinstance(exc.reply, Reply) else Reply()
        decision = decide(phase, reply, exhausted=True, completed=completed)
        if decision.action == Action.ACCOUNT:
            self._account(claim, exc, sent=sent)
        self._fal_answered(decision)
        return Decision(decision.action, f"{decision.reason}: {exc.message}"[:500], decision.bill, decision.outage)

    # ------------------------------------------------------------------ submit

    def _submit(self, claim: Claim) -> Claim | None:
        """Upload the job's media and submit it; the claim as submitted, or None when it ended here."""
        job = claim.job
        ep = catalog.endpoint(job.endpoint)
        try:
            if _source_changed(job):
                self._record(
                    claim,
                    Decision(
                        Action.FAILED,
                        "the source changed after it was planned and priced; "
                        "enqueue the manifest again to plan the new version",
                    ),
                )
                return None
            payload = self._with_uploads(ep, job.params)
        except (OSError, ProbeError) as exc:
            self._record(claim, Decision(Action.FAILED, f"source unreadable: {_plain(exc)}"))
            return None
        except RemoteError as exc:
            self._record(claim, self._failed_call(claim, Phase.UPLOAD, exc, sent=False))
            return None
        if self.stop.is_set():
            self.queue.release(claim, unsent=True)
            return None
        digest = input_sha256(payload)
        claim = self.queue.sending(claim, digest)
        try:
            sub = self.client.submit(ep.id, payload)
        except RemoteError as exc:
            # a key refused or an account locked on submit: fal created no request
            self._record(claim, self._failed_call(claim, Phase.SUBMIT, exc, sent=False))
            return None
        claim = self.queue.submitted(claim, sub.request_id, sub.status_url, sub.response_url, sub.cancel_url, digest)
        bind_log_context(request_id=sub.request_id)  # the job's later log lines name its request
        self._fal_answered()
        self.reporter.event(RunEvent.SUBMITTED, claim.job, request_id=sub.request_id, position=sub.queue_position)
        return claim

    def _with_uploads(self, ep: catalog.Endpoint, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Local media paths become fal storage URLs, each file uploaded once (by content hash); objects
        (s3://…) become presigned URLs."""
        out = dict(payload)
        for name in ep.media_fields:
            value = out.get(name)
            if isinstance(value, str) and not is_remote(value):
                out[name] = self._media_url(value)
            elif isinstance(value, list):
                out[name] = [self._media_url(v) if isinstance(v, str) and not is_remote(v) else v for v in value]
        return out

    def _media_url(self, value: str) -> str:
        """A local file is uploaded to fal; an object (s3://…) goes as a presigned URL (storage.py)."""
        if storage.is_store(value):
            return storage.url_for_fal(value, self.uploads.url, self.settings.store_url_lifetime_s)
        return self.uploads.url(Path(value))

    # ------------------------------------------------------------------ follow

    def _follow(self, claim: Claim) -> Handoff | None:
        job, attempt = claim.job, claim.attempt
        if job.state == JobState.DOWNLOADING and attempt.billed_micro_usd is not None and attempt.output_url:
            return self._handoff(claim, attempt.output_url, None, keep=True)  # a paid output fetched again: free
        if job.state == JobState.DOWNLOADING:
            completed: Completed | None = Completed((), None, None)  # it had completed before a restart
        else:
            try:
                claim, completed = self._wait_completed(claim)
            except _StatusFailedError as failed:
                self._record(failed.claim, self._failed_call(failed.claim, Phase.STATUS, failed.error, sent=True))
                return None
        if completed is None:  # stopping
            self._leave(claim)
            return None
        assert attempt.response_url is not None  # a followed attempt has fal's URLs
        try:
            result = self.client.result(attempt.response_url)
        except RemoteError as exc:
            decision = self._failed_call(claim, Phase.RESULT, exc, sent=True, completed=completed)
            if decision.bill == Bill.ESTIMATE and attempt.output_url:  # result gone, output still there
                return self._handoff(claim, attempt.output_url, None, bill=Bill.ESTIMATE)
            self._record(claim, decision, self.biller.bill(job, decision.bill, None))
            return None
        self._fal_answered()
        decision = decide_result(completed, result)
        if decision.action == Action.CONTINUE and result.video_url:
            return self._handoff(claim, result.video_url, result.billable_units)
        self._record(claim, decision, self.biller.bill(job, decision.bill, result.billable_units))
        return None

    def _handoff(
        self, claim: Claim, url: str, units: Decimal | None, *, keep: bool = False, bill: Bill = Bill.UNITS
    ) -> Handoff:
        """Write-ahead for delivery, the one way a Handoff is made: DOWNLOADING with fal's output
        URL (a no-op when it is so already), which frees the job's fal slot (IN_FLIGHT_STATES
        leaves DOWNLOADING out) and survives a stop or a crash."""
        claim = self.queue.progress(claim, JobState.DOWNLOADING, output_url=url)
        return Handoff(claim, url, units, keep=keep, bill=bill)

    def _wait_completed(self, claim: Claim) -> tuple[Claim, Completed | None]:
        """Follow the status stream to COMPLETED; fall back to adaptive polling if it breaks.
        Returns the claim as it now is (in progress) and fal's COMPLETED, or None when stopping;
        a status that cannot be read raises _StatusFailedError with the claim as it was then."""
        url = claim.attempt.status_url
        assert url is not None  # a followed attempt has fal's URLs
        verbose = log.isEnabledFor(20)
        answered = False
        try:
            for event in self.client.stream(url, logs=verbose):
                if not answered:  # fal answers: a half-open breaker may close before this job ends
                    self._fal_answered()
                    answered = True
                claim = self._on_status(claim, event)
                if isinstance(event, Completed):
                    return claim, event
            if self.stop.is_set():
                return claim, None
        except RemoteError as exc:
            log.info("job %s: status stream unavailable (%s); polling", claim.job.id, exc.message)
        interval, last = self.settings.poll_min_s, None
        while not self.stop.is_set():
            try:
                event = self.client.status(url, logs=verbose)
            except RemoteError as exc:
                raise _StatusFailedError(claim, exc) from exc
            if not answered:
                self._fal_answered()
                answered = True
            claim = self._on_status(claim, event)
            if isinstance(event, Completed):
                return claim, event
            now = (type(event), event.position if isinstance(event, Queued) else None)
            interval = self.settings.poll_min_s if now != last else min(interval * 1.5, self.settings.poll_max_s)
            last = now
            self.stop.wait(interval)
        return claim, None

    def _on_status(self, claim: Claim, event: Status) -> Claim:
        if isinstance(event, Queued):
            self.reporter.event(RunEvent.QUEUED, claim.job, position=event.position)
        elif isinstance(event, InProgress):
            claim = self.queue.progress(claim, JobState.IN_PROGRESS)
            if event.logs:  # the whole log so far: the reporter prints the lines it has not yet
                lines = [str(entry.get("message")) for entry in event.logs]
                self.reporter.event(RunEvent.LOG, claim.job, attempt=claim.attempt.id, lines=lines)
        return claim

    def _leave(self, claim: Claim) -> None:
        """Stopping: cancel the remote request if asked to, else leave it to be followed later."""
        cancel_url = claim.attempt.cancel_url
        if not (self.settings.cancel_on_exit and cancel_url):
            self.queue.release(claim)
            return
        try:
            answer = self.client.cancel(cancel_url)
        except RemoteError as exc:  # still running at fal, and may bill: leave it to be followed
            self.reporter.event(RunEvent.ERROR, claim.job, error=f"cancel failed, left to follow: {exc.message}")
            self.queue.release(claim)
            return
        if settle_cancel(self.queue, claim, answer):
            self.reporter.event(RunEvent.CANCELLED, claim.job)

    # ------------------------------------------------------------------ deliver

    def _deliver(self, handoff: Handoff) -> None:
        claim, url, units, keep, bill = handoff.claim, handoff.url, handoff.units, handoff.keep, handoff.bill
        job, attempt = claim.job, claim.attempt  # recorded DOWNLOADING by _handoff
        started = time.monotonic()
        got = self.delivery.fetch(job, attempt.number, url)
        fetched_s = time.monotonic() - started
        kept = Billing(
            attempt.billed_micro_usd or 0, attempt.billable_units, attempt.unit_price_micro_usd, attempt.price_source
        )
        if isinstance(got, NotDelivered):
            decision = self._undelivered(got, keep)
            if got.arrived or got.reply is not None:  # fal's CDN answered, or kept failing
                self._fal_answered(decision)
            self._record(claim, decision, kept if keep else self.biller.bill(job, bill, units), output_url=url)
            return
        self._fal_answered()
        money = kept if keep else self.biller.bill(job, bill, units, got)
        failed = self.delivery.publish(
            got, sidecar(job, attempt, got, money.micro_usd, money.units, money.source or "")
        )
        if failed is not None:
            self._record(claim, self._undelivered(failed, keep), money, output_url=url)
            return
        self.queue.finish(
            claim,
            JobState.SUCCEEDED,
            None,
            billed_micro_usd=money.micro_usd,
            billable_units=money.units,
            unit_price_micro_usd=money.unit_price_micro_usd,
            price_source=money.source,
            output=got.output_row(),
            output_url=url,
            keep_billed=keep,
        )
        for warning in got.warnings:  # delivered and billed; it differs only from our convention
            self.queue.record_event("output.check_warning", job=job, attempt_id=attempt.id, warning=warning)
            self.reporter.event(RunEvent.WARNING, job, message=f"job {job.id} delivered, but {warning}")
        fetched = {"download_bytes": got.size_bytes, "download_s": fetched_s}  # for the metrics
        self.reporter.event(RunEvent.SUCCEEDED, job, billed_micro_usd=0 if keep else money.micro_usd, **fetched)

    @staticmethod
    def _undelivered(got: NotDelivered, keep: bool) -> Decision:
        if got.arrived:  # fal delivered something that is not what was asked for
            return Decision(
                Action.FAILED,
                got.reason + (f" (kept at {got.kept_at})" if got.kept_at else ""),
                Bill.KEEP if keep else Bill.UNITS,
            )
        outage = got.reply is not None and decide(Phase.DOWNLOAD, got.reply, exhausted=True).outage
        return Decision(
            Action.UNDELIVERED,
            f"{got.reason}; the output stays at fal: `batch-runner retry` downloads it again without paying again",
            Bill.KEEP if keep else Bill.UNITS,
            outage,
        )


def settle_cancel(queue: Transitions, claim: Claim, answer: str) -> bool:
    """Record fal's answer to a cancel (outcome.decide_cancel): `OK` ends the job now; any other
    answer leaves it to be followed to its real end."""
    if decide_cancel(answer).action == Action.CANCELLED:
        queue.cancel_followed(claim, answer)
        return True
    queue.cancel_requested(claim, answer)
    return False


def _source_changed(job: JobRecord) -> bool:
    """The local source is not the file that was planned and priced (raises OSError if gone)."""
    src, planned = job.source, job.source_fingerprint
    return bool(src and planned and not is_remote(src, data_uri=False) and probe.fingerprint(src) != planned)


def _plain(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {Path(str(exc.filename)).name if exc.filename else ''}".rstrip(": ")
    return str(getattr(exc, "message", exc))[:300]


__all__ = ["Handoff", "NullReporter", "Reporter", "Worker", "WorkerSettings", "settle_cancel"]
