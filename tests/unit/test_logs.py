"""Log lines: human text or one JSON object a line, with the job in hand and never a secret."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import datetime

import pytest

from batch_runner.logs import LOGGER_NAME, bind_log_context, get_logger, log_context, setup_logging

KEY = "sk-live-0123456789abcdef"


@pytest.fixture(autouse=True)
def _fresh_logger() -> Iterator[None]:
    yield
    logging.getLogger(LOGGER_NAME).handlers.clear()  # no handler outlives the captured stderr


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_json_lines_carry_time_level_logger_event_and_the_job_in_hand(capsys: pytest.CaptureFixture[str]):
    setup_logging(1, [KEY], "json")
    log = get_logger("worker")
    log.info("before any job")
    with log_context(job=12, batch="nightly", run="r-1", request_id=None):
        log.warning("job %s: status stream unavailable; polling", 12)
        bind_log_context(request_id="req-abc")
        log.info("followed")
    log.info("after", extra={"job": 7})
    first, inside, bound, after = _json_lines(capsys.readouterr().err)
    assert first["level"] == "info" and first["logger"] == "batch_runner.worker" and first["event"] == "before any job"
    assert not {"job", "batch", "run", "request_id"} & first.keys()
    assert datetime.fromisoformat(first["time"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    assert first["time"].endswith("Z")
    assert inside["event"] == "job 12: status stream unavailable; polling" and inside["level"] == "warning"
    assert (inside["job"], inside["batch"], inside["run"]) == (12, "nightly", "r-1") and "request_id" not in inside
    assert bound["request_id"] == "req-abc"
    assert after == {**after, "job": 7} and "batch" not in after  # the block's context ended with it


def test_the_key_is_redacted_from_json_lines_and_their_tracebacks(capsys: pytest.CaptureFixture[str]):
    setup_logging(0, [KEY], "json")
    log = get_logger("api")
    with log_context(request_id=f"id-{KEY}"):
        log.warning("header Authorization: Key %s refused", KEY)
        try:
            raise RuntimeError(f"sent {KEY}")
        except RuntimeError:
            log.exception("unexpected")
    err = capsys.readouterr().err
    assert KEY not in err
    refused, crashed = _json_lines(err)
    assert refused["event"] == "header Authorization: Key *** refused" and refused["request_id"] == "id-***"
    assert "RuntimeError: sent ***" in crashed["exception"]


def test_text_lines_stay_human_and_redacted(capsys: pytest.CaptureFixture[str]):
    setup_logging(0, [KEY])
    try:
        raise RuntimeError(f"sent {KEY}")
    except RuntimeError:
        get_logger("pool").exception("job 3: unexpected error with %s", KEY)
    err = capsys.readouterr().err
    assert KEY not in err and " ERROR batch_runner.pool: job 3: unexpected error with ***" in err
    assert "RuntimeError: sent ***" in err and not err.startswith("{")


def test_each_thread_has_its_own_job_context(capsys: pytest.CaptureFixture[str]):
    setup_logging(0, [], "json")
    log = get_logger("pool")
    ready, done = threading.Barrier(2), []

    def work(job: int) -> None:
        with log_context(job=job):
            ready.wait(timeout=10)  # both blocks are open at once
            log.warning("job %s", job)
        done.append(job)

    threads = [threading.Thread(target=work, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    lines = _json_lines(capsys.readouterr().err)
    assert sorted(done) == [1, 2] and all(line["event"] == f"job {line['job']}" for line in lines) and len(lines) == 2
