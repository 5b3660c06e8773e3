"""Pure decisions, no I/O: from the phase of a job and fal's answer (or the failure of a call),
what happens to the job and what it cost. The worker records each decision in one place.

Money first: a job fal may have billed is never ended at $0 by a guess; when fal's answer is
unknown, the job is `uncertain` or its bill is left to be settled from fal's billing events.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from .api.answers import (
    CANCELLED_ERROR_TYPES,
    REJECTION_ERROR_TYPES,
    RETRYABLE_ERROR_TYPES,
    Completed,
    Failure,
    Phase,
    Reply,
    Result,
    is_answer,
    retry_call,
)


class Action(str, enum.Enum):
    """What happens to the job."""

    RETRY_CALL = "retry_call"  # send the same call again (the transport does, within its policy)
    CONTINUE = "continue"  # a good answer: go on (follow, fetch the result, download, verify)
    FOLLOW_LATER = "follow_later"  # hand the job back, request id kept, and follow it again after a pause
    REQUEUE_UNSENT = "requeue_unsent"  # nothing reached fal: back to the queue; no attempt is spent
    NEW_ATTEMPT = "new_attempt"  # fal ran it and failed without billing: a new attempt may succeed
    FAILED = "failed"  # a terminal failure
    REJECTED = "rejected"  # fal refused the input: fix the manifest
    UNCERTAIN = "uncertain"  # fal may have accepted the submit: settled by asking fal (`resolve`)
    CANCELLED = "cancelled"
    UNDELIVERED = "undelivered"  # billed, but the output did not arrive: kept at fal for a free re-download
    ACCOUNT = "account"  # fal refused the key or locked the account: send nothing more


class Bill(str, enum.Enum):
    """What to record as billed."""

    NOTHING = "nothing"  # fal billed nothing: $0 ("5xx never charged", nothing ran, nothing was sent)
    UNITS = "units"  # what fal said it billed (x-fal-billable-units × its unit price), else the price
    # table on the verified output
    ESTIMATE = "estimate"  # fal billed a success but its units are unknown: our estimate, marked so
    ASK = "ask"  # fal may have billed (a refused run, §11 "422 may be charged"): $0 until fal's billing
    # events say otherwise (`resolve`)
    KEEP = "keep"  # billed and recorded already; leave it as it is


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    bill: Bill = Bill.NOTHING
    outage: bool = False  # fal or the network failed for this call: a signal for the circuit breaker


def decide(
    phase: Phase,
    reply: Reply,
    *,
    exhausted: bool = False,
    completed: Completed | None = None,
    result: Result | None = None,
) -> Decision:
    """The decision for one reply in one phase. `exhausted`: the call's own retries are used up.
    `completed` and `result` are the status and result of a finished request (RESULT phase)."""
    if is_answer(phase, reply):
        if phase == Phase.RESULT:
            return decide_result(completed or Completed((), None, None), result or Result(reply, None))
        return Decision(Action.CONTINUE, "ok")
    if retry_call(phase, reply):
        if not exhausted:
            return Decision(Action.RETRY_CALL, f"{phase.value} {reply.describe}: repeated")
        return _exhausted(phase, reply)
    # the caller raises the error itself; output files and signed upload URLs carry no key of ours
    if reply.status in (401, 403) and phase != Phase.DOWNLOAD and not reply.keyless:
        return Decision(Action.ACCOUNT, f"fal refused the key or locked the account ({reply.describe})")
    return _refused(phase, reply, completed)


def _exhausted(phase: Phase, reply: Reply) -> Decision:
    """A call that kept failing after its retries: never the job's answer."""
    why = f"{phase.value}: {reply.describe}, still after retries"
    if phase in (Phase.UPLOAD, Phase.SUBMIT):  # nothing reached fal (a submit retries only then)
        return Decision(Action.REQUEUE_UNSENT, f"{why}; nothing was sent", outage=True)
    if phase == Phase.DOWNLOAD:
        return Decision(Action.UNDELIVERED, f"{why}; the output stays at fal", Bill.KEEP, outage=True)
    return Decision(Action.FOLLOW_LATER, f"{why}; followed again later", outage=reply.status != 429)


def _refused(phase: Phase, reply: Reply, completed: Completed | None) -> Decision:
    """A final answer that is not a success, and not worth repeating."""
    code, what = reply.status, f"{phase.value}: {reply.describe}"
    if phase == Phase.UPLOAD:
        return Decision(Action.FAILED, f"{what}: fal's storage refused the file")
    if phase == Phase.SUBMIT:
        if reply.failure is not None or code is None or code == 409 or code == 499 or code >= 500:
            return Decision(Action.UNCERTAIN, f"{what} after the submit went out: it may have been accepted")
        if code in (400, 422):
            return Decision(Action.REJECTED, f"{what}: fal refused the input")
        return Decision(Action.FAILED, f"{what}: fal did not accept the submit")  # 404 unknown endpoint, 405, 410…
    if phase == Phase.STATUS:  # fal does not know the request (any more): ask it what became of it
        return Decision(Action.UNCERTAIN, f"{what}: fal answered no status for the request")
    if phase == Phase.RESULT:
        if code == 400:  # "Request is still in progress" (§5, historical)
            return Decision(Action.FOLLOW_LATER, f"{what}: the result is not ready")
        if completed is not None and completed.error is not None:
            return decide_result(completed, Result(reply, None))
        if code in (404, 410):  # completed, billed, and the result is gone (fal keeps it 1 h, §5)
            return Decision(Action.FAILED, f"{what}: the result expired before it was collected", Bill.ESTIMATE)
        return Decision(Action.FOLLOW_LATER, f"{what}: no result")
    if phase == Phase.DOWNLOAD:
        return Decision(Action.UNDELIVERED, f"{what}: fal's output file is not available", Bill.KEEP)
    if phase == Phase.CANCEL:
        return Decision(Action.FOLLOW_LATER, f"{what}: the cancel was not taken; followed to its end")
    return Decision(Action.FAILED, what)


def decide_result(completed: Completed, result: Result) -> Decision:
    """A finished request: its status (COMPLETED, maybe with `error`) and its result's answer."""
    reply, units = result.reply, result.billable_units
    billed = units is not None and units > 0
    error_type = completed.error_type or result.error_type
    message = completed.error or result.detail or reply.describe
    if result.ok and completed.error is None:
        if result.video_url is None:
            return Decision(
                Action.FAILED, "the result has no video URL", Bill.UNITS if units is not None else Bill.ESTIMATE
            )
        return Decision(Action.CONTINUE, "completed", Bill.UNITS)
    reason = f"{error_type or 'error'}: {message}"
    unknown = Bill.NOTHING if units is not None else Bill.ASK  # units 0: fal said it billed nothing
    if error_type in CANCELLED_ERROR_TYPES or reply.status == 499:
        # cancelled while running, it may have used GPU time: without fal's units, ask its billing events
        return Decision(Action.CANCELLED, reason, Bill.UNITS if billed else unknown)
    if reply.user_timeout and not billed:
        # 504 + X-Fal-Request-Timeout-Type: user: the start deadline passed before any runner began,
        # so it never ran (https://docs.fal.ai/documentation/model-apis/common-parameters). Final for
        # this attempt: another would wait against the same deadline; `retry` may send it again.
        return Decision(
            Action.FAILED,
            f"{reason} (its start deadline, X-Fal-Request-Timeout, passed before it started: never run, not billed)",
            Bill.NOTHING,
        )
    if billed:
        rejected = error_type in REJECTION_ERROR_TYPES or (
            reply.status == 422 and error_type != "content_policy_violation"
        )
        return Decision(Action.REJECTED if rejected else Action.FAILED, reason, Bill.UNITS)
    if (reply.status or 0) >= 500 or error_type in RETRYABLE_ERROR_TYPES:
        return Decision(Action.NEW_ATTEMPT, reason)  # "5xx never charged" (§11): a new attempt is free
    if error_type in REJECTION_ERROR_TYPES or (reply.status == 422 and error_type != "content_policy_violation"):
        return Decision(Action.REJECTED, reason, unknown)
    return Decision(Action.FAILED, reason, unknown)


def decide_cancel(answer: str) -> Decision:
    """fal's answer to a cancel (§6). Only `OK` (still queued: it never runs, never bills) ends the
    job now; CANCELLATION_REQUESTED may still finish and bill, so the job is followed to its end."""
    if answer == "OK":
        return Decision(Action.CANCELLED, "cancelled at fal while queued: never run, never billed")
    return Decision(Action.FOLLOW_LATER, f"cancel answered {answer[:40]}: followed to its real end")


def with_attempts(decision: Decision, failed_attempts: int, max_attempts: int) -> Decision:
    """A new attempt only while the automatic attempts last (each `retry` grants a fresh set)."""
    if decision.action == Action.NEW_ATTEMPT and failed_attempts >= max_attempts:
        return replace(decision, action=Action.FAILED, reason=f"{decision.reason} (after {failed_attempts} attempts)")
    return decision


__all__ = ["Action", "Bill", "Decision", "Failure", "decide", "decide_cancel", "decide_result", "with_attempts"]
