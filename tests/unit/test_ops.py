"""Operations settings, the metrics' error-type label and the webhook signature, as pure logic."""

from __future__ import annotations

import pytest

from batch_runner.config import Secret, ops_from_env
from batch_runner.errors import ConfigError
from batch_runner.metrics import ERROR_TYPES, error_type
from batch_runner.notify import redact_url, sign, slack_text, verify


def test_ops_settings_are_off_by_default_and_read_from_the_environment(tmp_path):
    assert ops_from_env({}).metrics_port is None and ops_from_env({}).notify_urls == ()
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    ops = ops_from_env(
        {
            "BATCH_RUNNER_METRICS_PORT": "0",
            "BATCH_RUNNER_NOTIFY_URLS": "http://a/x, https://b/y?token=t",
            "BATCH_RUNNER_NOTIFY_SECRET_FILE": str(secret),
            "BATCH_RUNNER_NOTIFY_FORMAT": "slack",
            "BATCH_RUNNER_NOTIFY_OUTAGE_AFTER_S": "12.5",
        }
    )
    assert (ops.metrics_port, ops.metrics_addr, ops.notify_format) == (0, "127.0.0.1", "slack")
    assert ops.notify_urls == ("http://a/x", "https://b/y?token=t") and ops.notify_outage_after_s == 12.5
    assert ops.notify_secret == Secret("s3cret") and "s3cret" not in repr(ops)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"BATCH_RUNNER_METRICS_PORT": "70000"}, "BATCH_RUNNER_METRICS_PORT='70000' must be a port"),
        ({"BATCH_RUNNER_METRICS_PORT": "x"}, "must be a port number"),
        ({"BATCH_RUNNER_NOTIFY_URLS": "ftp://h/p?token=hidden"}, "is not an http(s) URL"),
        ({"BATCH_RUNNER_NOTIFY_FORMAT": "xml"}, "must be one of json, slack"),
        ({"BATCH_RUNNER_NOTIFY_SECRET_FILE": "/nonexistent/secret"}, "cannot read"),
        ({"BATCH_RUNNER_NOTIFY_OUTAGE_AFTER_S": "-1"}, "must be a positive number of seconds"),
    ],
)
def test_a_bad_ops_setting_names_its_variable_and_never_the_query(env, says):
    with pytest.raises(ConfigError) as err:
        ops_from_env(env)
    assert says in err.value.message and "hidden" not in err.value.message


def test_the_error_type_label_stays_in_a_bounded_set():
    assert error_type({"error_type": "runner_disconnected"}) == "runner_disconnected"
    assert error_type({"error_type": "something_new"}) == "other"  # never a free-form label value
    assert error_type({"error": "fal: internal_server_error (500)"}) == "internal_server_error"  # not server_error
    assert error_type({"error": "connection refused"}) == "unknown"
    assert {error_type({"error": f"x {t} y"}) for t in ERROR_TYPES} == ERROR_TYPES


def test_a_signature_verifies_only_for_its_body_secret_and_time():
    body = b'{"kind": "run.finished"}'
    header = sign("k", 1_700_000_000, body)
    assert header.startswith("t=1700000000,v1=") and verify("k", header, body, now=1_700_000_100)
    assert not verify("k", header, body + b" ", now=1_700_000_100)
    assert not verify("other", header, body, now=1_700_000_100)
    assert not verify("k", header, body, now=1_700_000_000 + 301)  # outside the replay window
    assert not verify("k", "garbage", body, now=1_700_000_000)


def test_urls_are_logged_without_their_query_and_slack_text_is_one_line():
    assert redact_url("https://hooks.example:8443/p/q?token=abc#f") == "https://hooks.example:8443/p/q"
    text = slack_text({"kind": "run.finished", "run": "r1", "counts": {"succeeded": 2}, "billed_usd": "0.60"})
    assert text == "batch-runner run.finished: run r1 — succeeded 2; billed $0.60"


def test_slack_text_of_uncertain_jobs_told_mid_run_says_how_many_and_which():
    event = {"kind": "jobs.uncertain", "run": "r1", "uncertain": 3, "jobs": [7, 9]}
    assert slack_text(event) == "batch-runner jobs.uncertain: run r1 — uncertain 3; jobs 7, 9 …"


def test_the_readme_receiver_check_accepts_our_signature_and_refuses_another():
    import re
    import time
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = re.search(r"```python\n(import hashlib, hmac, time\n.*?)```", readme, re.S)
    assert code, "the README shows the receiver's check"
    scope: dict = {}
    exec(code.group(1), scope)
    body = b'{"kind": "run.finished"}'
    header = sign("k", int(time.time()), body)
    assert scope["verified"](b"k", header, body) and not scope["verified"](b"x", header, body)
