"""Retry policy and the translation of fal's error answers into our error tree."""

import httpx
import pytest

from batch_runner.api.transport import RetryPolicy, error_for, is_ingress_error
from batch_runner.errors import (
    AccountLockedError,
    AuthError,
    InputRejectedError,
    RateLimitedError,
    RemoteError,
    TransientRemoteError,
)


def test_backoff_grows_is_capped_and_jittered():
    policy = RetryPolicy(base_s=0.5, cap_s=4.0)
    assert policy.delay(1, rng=lambda: 0.5) == 0.5
    assert policy.delay(3, rng=lambda: 0.5) == 2.0
    assert policy.delay(10, rng=lambda: 0.5) == 4.0  # capped
    assert policy.delay(1, rng=lambda: 0.0) == 0.25 and policy.delay(1, rng=lambda: 1.0) == 0.75


def test_retry_after_is_honoured_but_bounded():
    policy = RetryPolicy(base_s=0.5, max_retry_after_s=60)
    assert policy.delay(1, retry_after_s=7, rng=lambda: 0.5) == 7
    assert policy.delay(1, retry_after_s=3600, rng=lambda: 0.5) == 60


def _resp(code, body=None, headers=None, text=None):
    req = httpx.Request("POST", "https://queue.fal.run/x")
    if text is not None:
        return httpx.Response(code, text=text, headers=headers, request=req)
    return httpx.Response(code, json=body, headers=headers, request=req)


@pytest.mark.parametrize(
    ("resp", "kind"),
    [
        (_resp(401, {"detail": "Invalid key"}), AuthError),
        (_resp(403, {"detail": "User is locked. Reason: Exhausted balance."}), AccountLockedError),
        (_resp(403, {"detail": "Forbidden"}), AuthError),
        (_resp(429, {"detail": "slow down"}, {"Retry-After": "3"}), RateLimitedError),
        (_resp(422, {"detail": [{"loc": ["body", "aspect_ratio"], "msg": "bad", "type": "enum"}]}), InputRejectedError),
        (_resp(503, text="<html>nginx</html>"), TransientRemoteError),
        (_resp(400, {"detail": "nope"}), RemoteError),
    ],
)
def test_error_translation(resp, kind):
    err = error_for(resp, "submit")
    assert type(err) is kind and err.status == resp.status_code
    assert err.message.startswith(f"submit: HTTP {resp.status_code}")


def test_422_message_names_the_field_and_rate_limit_keeps_retry_after():
    err = error_for(
        _resp(
            422,
            {
                "detail": [
                    {"loc": ["body", "prompt"], "msg": "field required", "type": "missing"},
                    {"loc": ["body", "x"], "msg": "y", "type": "z"},
                ]
            },
        ),
        "submit",
    )
    assert "prompt: field required (and 1 more)" in err.message
    assert error_for(_resp(429, {}, {"Retry-After": "3"}), "status").retry_after_s == 3.0


def test_ingress_errors_are_nginx_pages_without_a_request_id():
    assert is_ingress_error(_resp(502, text="<center>nginx</center>"))
    assert not is_ingress_error(_resp(502, text="<center>nginx</center>", headers={"x-fal-request-id": "r"}))
    assert not is_ingress_error(_resp(500, text="nginx"))
