"""The decision table: every phase × every status fal or a proxy can send × with and without
x-fal-request-id × with and without billable units. No server, no database."""

from __future__ import annotations

from decimal import Decimal

import pytest

from batch_runner.api.answers import Completed, Failure, Phase, Reply, Result
from batch_runner.outcome import Action, Bill, decide, decide_cancel, decide_result, with_attempts

CODES = [200, 202, 400, 401, 403, 404, 408, 409, 410, 422, 429, 499, 500, 502, 503, 504, "reset", "timeout", "connect"]

A = Action
# What one reply does in each phase (not yet exhausted), without / with x-fal-request-id.
# RESULT 2xx and answers carrying a request id go to decide_result, tested separately below.
TABLE: dict[Phase, dict[object, tuple[Action, Action]]] = {
    Phase.UPLOAD: {
        200: (A.CONTINUE,) * 2,
        202: (A.CONTINUE,) * 2,
        400: (A.FAILED,) * 2,
        401: (A.ACCOUNT,) * 2,
        403: (A.ACCOUNT,) * 2,
        404: (A.FAILED,) * 2,
        408: (A.RETRY_CALL,) * 2,
        409: (A.RETRY_CALL,) * 2,
        410: (A.FAILED,) * 2,
        422: (A.FAILED,) * 2,
        429: (A.RETRY_CALL,) * 2,
        499: (A.FAILED,) * 2,
        500: (A.RETRY_CALL,) * 2,
        502: (A.RETRY_CALL,) * 2,
        503: (A.RETRY_CALL,) * 2,
        504: (A.RETRY_CALL,) * 2,
        "reset": (A.RETRY_CALL,) * 2,
        "timeout": (A.RETRY_CALL,) * 2,
        "connect": (A.RETRY_CALL,) * 2,
    },
    # a submit is repeated only with proof that fal did not take it; anything else may have billed
    Phase.SUBMIT: {
        200: (A.CONTINUE,) * 2,
        202: (A.CONTINUE,) * 2,
        400: (A.REJECTED,) * 2,
        401: (A.ACCOUNT,) * 2,
        403: (A.ACCOUNT,) * 2,
        404: (A.FAILED,) * 2,
        408: (A.RETRY_CALL,) * 2,
        409: (A.UNCERTAIN,) * 2,
        410: (A.FAILED,) * 2,
        422: (A.REJECTED,) * 2,
        429: (A.RETRY_CALL,) * 2,
        499: (A.UNCERTAIN,) * 2,
        500: (A.UNCERTAIN,) * 2,
        502: (A.UNCERTAIN,) * 2,
        503: (A.UNCERTAIN,) * 2,
        504: (A.UNCERTAIN,) * 2,
        "reset": (A.UNCERTAIN,) * 2,
        "timeout": (A.UNCERTAIN,) * 2,
        "connect": (A.RETRY_CALL,) * 2,
    },
    # a status that cannot be read is never the job's answer
    Phase.STATUS: {
        200: (A.CONTINUE,) * 2,
        202: (A.CONTINUE,) * 2,
        400: (A.UNCERTAIN,) * 2,
        401: (A.ACCOUNT,) * 2,
        403: (A.ACCOUNT,) * 2,
        404: (A.UNCERTAIN,) * 2,
        408: (A.RETRY_CALL,) * 2,
        409: (A.RETRY_CALL,) * 2,
        410: (A.UNCERTAIN,) * 2,
        422: (A.UNCERTAIN,) * 2,
        429: (A.RETRY_CALL,) * 2,
        499: (A.UNCERTAIN,) * 2,
        500: (A.RETRY_CALL,) * 2,
        502: (A.RETRY_CALL,) * 2,
        503: (A.RETRY_CALL,) * 2,
        504: (A.RETRY_CALL,) * 2,
        "reset": (A.RETRY_CALL,) * 2,
        "timeout": (A.RETRY_CALL,) * 2,
        "connect": (A.RETRY_CALL,) * 2,
    },
    # without a request id, a result error is a failed call; with one, it is the model's answer
    Phase.RESULT: {
        400: (A.FOLLOW_LATER, A.FAILED),
        401: (A.ACCOUNT,) * 2,
        403: (A.ACCOUNT,) * 2,
        404: (A.FAILED, A.FAILED),
        408: (A.RETRY_CALL,) * 2,
        409: (A.RETRY_CALL,) * 2,
        410: (A.FAILED, A.FAILED),
        422: (A.FOLLOW_LATER, A.REJECTED),
        429: (A.RETRY_CALL,) * 2,
        499: (A.FOLLOW_LATER, A.CANCELLED),
        500: (A.RETRY_CALL, A.NEW_ATTEMPT),
        502: (A.RETRY_CALL, A.NEW_ATTEMPT),
        503: (A.RETRY_CALL, A.NEW_ATTEMPT),
        504: (A.RETRY_CALL, A.NEW_ATTEMPT),
        "reset": (A.RETRY_CALL,) * 2,
        "timeout": (A.RETRY_CALL,) * 2,
        "connect": (A.RETRY_CALL,) * 2,
    },
    Phase.DOWNLOAD: {
        200: (A.CONTINUE,) * 2,
        202: (A.CONTINUE,) * 2,
        400: (A.UNDELIVERED,) * 2,
        401: (A.UNDELIVERED,) * 2,
        403: (A.UNDELIVERED,) * 2,
        404: (A.UNDELIVERED,) * 2,
        408: (A.RETRY_CALL,) * 2,
        409: (A.RETRY_CALL,) * 2,
        410: (A.UNDELIVERED,) * 2,
        422: (A.UNDELIVERED,) * 2,
        429: (A.RETRY_CALL,) * 2,
        499: (A.UNDELIVERED,) * 2,
        500: (A.RETRY_CALL,) * 2,
        502: (A.RETRY_CALL,) * 2,
        503: (A.RETRY_CALL,) * 2,
        504: (A.RETRY_CALL,) * 2,
        "reset": (A.RETRY_CALL,) * 2,
        "timeout": (A.RETRY_CALL,) * 2,
        "connect": (A.RETRY_CALL,) * 2,
    },
    Phase.CANCEL: {
        200: (A.CONTINUE,) * 2,
        202: (A.CONTINUE,) * 2,
        400: (A.CONTINUE,) * 2,
        401: (A.ACCOUNT,) * 2,
        403: (A.ACCOUNT,) * 2,
        404: (A.CONTINUE,) * 2,
        408: (A.RETRY_CALL,) * 2,
        409: (A.RETRY_CALL,) * 2,
        410: (A.FOLLOW_LATER,) * 2,
        422: (A.FOLLOW_LATER,) * 2,
        429: (A.RETRY_CALL,) * 2,
        499: (A.FOLLOW_LATER,) * 2,
        500: (A.RETRY_CALL,) * 2,
        502: (A.RETRY_CALL,) * 2,
        503: (A.RETRY_CALL,) * 2,
        504: (A.RETRY_CALL,) * 2,
        "reset": (A.RETRY_CALL,) * 2,
        "timeout": (A.RETRY_CALL,) * 2,
        "connect": (A.RETRY_CALL,) * 2,
    },
}
#: After its retries are used up, a call that kept failing becomes:
EXHAUSTED = {
    Phase.UPLOAD: A.REQUEUE_UNSENT,
    Phase.SUBMIT: A.REQUEUE_UNSENT,
    Phase.STATUS: A.FOLLOW_LATER,
    Phase.RESULT: A.FOLLOW_LATER,
    Phase.DOWNLOAD: A.UNDELIVERED,
    Phase.CANCEL: A.FOLLOW_LATER,
}


def _reply(code: object, rid: bool, units: Decimal | None, ingress: bool = False) -> Reply:
    if isinstance(code, str):
        return Reply(failure=Failure(code), request_id="r" if rid else None)
    return Reply(status=int(code), request_id="r" if rid else None, billable_units=units, ingress=ingress)


CASES = [
    (phase, code, rid, units)
    for phase, row in TABLE.items()
    for code in CODES
    if code in row
    for rid in (False, True)
    for units in (None, Decimal(0), Decimal(5))
]


@pytest.mark.parametrize(("phase", "code", "rid", "units"), CASES)
def test_every_reply_in_every_phase_has_one_decision(phase: Phase, code: object, rid: bool, units: Decimal | None):
    reply = _reply(code, rid, units)
    first = decide(phase, reply, result=Result(reply, {"detail": "x"}))
    expected = TABLE[phase][code][1 if rid else 0]
    if phase == Phase.RESULT and rid and isinstance(code, int) and code >= 500 and units and units > 0:
        expected = A.FAILED  # a 5xx that fal says it billed is a billed failure, not a free new attempt
    assert first.action == expected, (phase, code, rid, units, first)
    if phase == Phase.RESULT and first.action in (A.FAILED, A.REJECTED) and units and units > 0 and rid:
        assert first.bill == Bill.UNITS  # fal said what it billed: recorded
    if first.action == A.RETRY_CALL:
        assert decide(phase, reply, exhausted=True).action == EXHAUSTED[phase]


@pytest.mark.parametrize(("phase", "code", "rid", "units"), CASES)
def test_a_reply_that_may_have_billed_never_ends_the_job_at_no_cost(phase, code, rid, units):
    reply = _reply(code, rid, units)
    for exhausted in (False, True):
        d = decide(phase, reply, exhausted=exhausted, result=Result(reply, {"detail": "x"}))
        if phase in (Phase.STATUS, Phase.CANCEL):  # a request known to fal is never given up on a read
            assert d.action not in (A.FAILED, A.REJECTED, A.NEW_ATTEMPT, A.REQUEUE_UNSENT), d
        if phase == Phase.RESULT and rid and d.action in (A.FAILED, A.REJECTED, A.CANCELLED) and units:
            assert d.bill == Bill.UNITS, d  # fal's word on what it billed is what is recorded
        if phase == Phase.SUBMIT and d.action == A.REQUEUE_UNSENT:  # resubmitted only with proof
            assert code in (408, 429, "connect"), d


@pytest.mark.parametrize("code", [502, 503, 504])
def test_an_ingress_page_proves_a_submit_was_not_taken(code: int):
    reply = Reply(status=code, ingress=True)
    assert decide(Phase.SUBMIT, reply).action == A.RETRY_CALL
    assert decide(Phase.SUBMIT, reply, exhausted=True).action == A.REQUEUE_UNSENT


def test_a_typed_start_timeout_without_a_request_id_is_not_billed_and_may_be_sent_again():
    assert decide(Phase.SUBMIT, Reply(status=504, user_timeout=True)).action == A.RETRY_CALL
    assert decide(Phase.SUBMIT, Reply(status=504, user_timeout=True, request_id="r")).action == A.UNCERTAIN


def test_a_queued_request_whose_start_timeout_passed_fails_unbilled_without_a_new_attempt():
    """fal's 504 + X-Fal-Request-Timeout-Type: user on the result (docs: model-apis/common-parameters)."""
    completed = Completed((), "Request timed out", "request_timeout")
    reply = Reply(status=504, request_id="r", error_type="request_timeout", user_timeout=True)
    d = decide(Phase.RESULT, reply, completed=completed, result=Result(reply, {"detail": "Request timed out"}))
    assert (d.action, d.bill) == (A.FAILED, Bill.NOTHING) and "X-Fal-Request-Timeout" in d.reason
    infra = Reply(status=504, request_id="r", error_type="request_timeout")  # fal's own timeout: a new attempt
    assert decide_result(completed, Result(infra, {})).action == A.NEW_ATTEMPT


def test_an_expired_result_of_a_success_records_the_estimate():
    d = decide(Phase.RESULT, Reply(status=404), completed=Completed((), None, None))
    assert (d.action, d.bill) == (A.FAILED, Bill.ESTIMATE)


@pytest.mark.parametrize(
    ("error_type", "status", "units", "action", "bill"),
    [
        ("runner_disconnected", 503, None, A.NEW_ATTEMPT, Bill.NOTHING),
        ("client_cancelled", 499, None, A.CANCELLED, Bill.ASK),  # it may have run: fal's billing events say
        ("client_cancelled", 499, Decimal(0), A.CANCELLED, Bill.NOTHING),
        ("request_cancelled", 400, None, A.CANCELLED, Bill.ASK),
        ("content_policy_violation", 422, None, A.FAILED, Bill.ASK),
        ("content_policy_violation", 422, Decimal(0), A.FAILED, Bill.NOTHING),
        ("content_policy_violation", 422, Decimal(3), A.FAILED, Bill.UNITS),
        ("missing", 422, None, A.REJECTED, Bill.ASK),
        ("file_download_error", 422, Decimal(2), A.REJECTED, Bill.UNITS),
    ],
)
def test_a_failed_run_by_fals_error_type(error_type, status, units, action, bill):
    completed = Completed((), "it failed", error_type)
    d = decide_result(completed, Result(Reply(status=status, request_id="r", billable_units=units), {"detail": "x"}))
    assert (d.action, d.bill) == (action, bill)


def test_a_success_without_a_video_is_a_billed_failure():
    d = decide_result(Completed((), None, None), Result(Reply(status=200, request_id="r"), {"images": []}))
    assert (d.action, d.bill) == (A.FAILED, Bill.ESTIMATE)
    ok = decide_result(Completed((), None, None), Result(Reply(status=200, request_id="r"), {"video": {"url": "u"}}))
    assert (ok.action, ok.bill) == (A.CONTINUE, Bill.UNITS)


def test_only_ok_ends_a_cancelled_job_at_once():
    assert decide_cancel("OK").action == A.CANCELLED
    for answer in ("CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND", "HTTP 500"):
        assert decide_cancel(answer).action == A.FOLLOW_LATER


def test_new_attempts_stop_after_the_automatic_ones():
    d = decide_result(Completed((), "x", "runner_disconnected"), Result(Reply(status=503, request_id="r"), {}))
    assert with_attempts(d, 2, 3).action == A.NEW_ATTEMPT
    assert with_attempts(d, 3, 3).action == A.FAILED and "after 3 attempts" in with_attempts(d, 3, 3).reason


def test_outages_are_signalled_to_the_breaker_but_rate_limits_are_not():
    assert decide(Phase.STATUS, Reply(status=502), exhausted=True).outage
    assert decide(Phase.STATUS, Reply(failure=Failure.CONNECT), exhausted=True).outage
    assert not decide(Phase.STATUS, Reply(status=429), exhausted=True).outage


def test_a_refused_signed_url_is_about_that_url_never_the_key():
    for status in (401, 403):
        assert decide(Phase.UPLOAD, Reply(status=status)).action == A.ACCOUNT  # our key, on a keyed call
        assert decide(Phase.UPLOAD, Reply(status=status, keyless=True)).action == A.FAILED
