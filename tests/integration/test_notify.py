"""Notifications over real HTTP: each kind is received by a local http.server and its signature
verified; a failing receiver is retried, audited, and never fails the run."""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from batch_runner.cli import cli
from batch_runner.config import Secret, ops_from_env
from batch_runner.domain import RunEvent
from batch_runner.notify import ATTEMPTS, SIGNATURE_HEADER, Notifier, NotifyingReporter, verify
from tests.integration.run_helpers import make_bench

SECRET = "whsec-test"


class Receiver:
    """A webhook receiver on a free port: each path answers from its script of status codes (the
    last one repeats) and records what it got."""

    def __init__(self, scripts: dict[str, list[int]]) -> None:
        self.scripts, self.got, self.lock = scripts, [], threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                path = self.path.split("?")[0]
                with outer.lock:
                    outer.got.append((path, dict(self.headers), body))
                    script = outer.scripts[path]
                    code = script.pop(0) if len(script) > 1 else script[0]
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}?token=do-not-log"

    def events(self, path: str = "/ok") -> list[dict[str, Any]]:
        """The verified events received on `path` (a bad signature fails the test)."""
        out = []
        for p, headers, body in list(self.got):
            if p == path:
                assert verify(SECRET, headers[SIGNATURE_HEADER], body, now=time.time()), headers
                out.append(json.loads(body))
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver({"/ok": [200], "/flaky": [500, 200], "/down": [500]})
    yield r
    r.close()


def _env(bench, *urls: str, **extra: str) -> dict[str, str]:
    return {
        "BATCH_RUNNER_DB": bench.db_url,
        "BATCH_RUNNER_FAL_URL": bench.emulator.url,
        "FAL_KEY": "notify-key",
        "BATCH_RUNNER_NOTIFY_URLS": ",".join(urls),
        "BATCH_RUNNER_NOTIFY_SECRET": SECRET,
        **extra,
    }


def test_run_end_budget_warning_and_budget_stop_are_posted_signed(tmp_path, media, emulator_factory, receiver):
    bench = make_bench(tmp_path, media, emulator_factory())  # 4 jobs at $0.30
    env = _env(bench, receiver.url("/ok"), BATCH_RUNNER_WARN_AT_USD="0.30")
    result = CliRunner().invoke(cli, ["run", str(bench.manifest), "--max-cost", "0.60"], env=env)
    assert result.exit_code == 5, result.output
    events = {e["kind"]: e for e in receiver.events()}
    assert set(events) == {"budget.warning", "run.finished", "budget.stop"}
    end, stop = events["run.finished"], events["budget.stop"]
    assert end["counts"] == {"succeeded": 2} and end["billed_usd"] == "0.60" and end["budget_usd"] == "0.60"
    assert end["stopped_by"] == "budget" and end["exit_code"] == 5 and end["batches"] == ["b"]
    assert stop["scope"] == "run" and stop["not_run"] == 2 and stop["run"] == end["run"]
    assert "warning threshold" in events["budget.warning"]["message"] and events["budget.warning"]["run"]
    for e in events.values():
        assert Decimal(e.get("billed_usd") or "0") >= 0 and e["time"].endswith("+00:00")
    assert "token=do-not-log" not in result.output


def test_jobs_left_uncertain_are_posted_as_slack_text(tmp_path, media, emulator_factory, receiver):
    bench = make_bench(tmp_path, media, emulator_factory(faults="drop_after_submit=1/1"))
    env = _env(bench, receiver.url("/ok"), BATCH_RUNNER_NOTIFY_FORMAT="slack")
    result = CliRunner().invoke(cli, ["run", str(bench.manifest)], env=env)
    assert result.exit_code == 1, result.output
    texts = [e["text"] for e in receiver.events()]
    [(job_id,)] = bench.sql("select id from jobs where state = 'uncertain'")
    # told once: with the run's counts at its end, or alone when the run outlasts the 10 s coalescing
    [uncertain] = [t for t in texts if t.startswith("batch-runner jobs.uncertain")]
    assert "uncertain 1" in uncertain and f"jobs {job_id}" in uncertain, uncertain
    [finished] = [t for t in texts if t.startswith("batch-runner run.finished")]
    assert "succeeded 3, uncertain 1" in finished, finished


def test_a_failing_receiver_is_retried_audited_and_never_fails_the_run(tmp_path, media, emulator_factory, receiver):
    bench = make_bench(tmp_path, media, emulator_factory(), clips=1)
    env = _env(bench, receiver.url("/flaky"), receiver.url("/ok"))
    result = CliRunner().invoke(cli, ["run", str(bench.manifest)], env=env)
    assert result.exit_code == 0, result.output
    assert [e["kind"] for e in receiver.events("/ok")] == ["run.finished"]
    assert [e["kind"] for e in receiver.events("/flaky")] == ["run.finished", "run.finished"]  # 500, then 200
    audited = [json.loads(d) for (d,) in bench.sql("select details_json from events where kind = 'notify.failed'")]
    assert [(a["url"], a["attempt"], a["error"], a["gave_up"]) for a in audited] == [
        (receiver.url("/flaky").split("?")[0], 1, "HTTP 500", False)  # never the query string
    ]
    assert SECRET not in result.output and "do-not-log" not in result.output


def test_a_receiver_that_always_fails_is_given_up_after_the_last_attempt(receiver):
    ops = ops_from_env({"BATCH_RUNNER_NOTIFY_URLS": receiver.url("/down"), "BATCH_RUNNER_NOTIFY_SECRET": SECRET})
    audit: list[tuple[str, dict[str, Any]]] = []
    notifier = Notifier(ops, lambda kind, **d: audit.append((kind, d)), backoff_s=0.01)
    notifier.send("run.finished", run="r")
    notifier.close()
    assert len(receiver.events("/down")) == ATTEMPTS
    assert [(k, d["attempt"], d["gave_up"]) for k, d in audit] == [
        ("notify.failed", n, n == ATTEMPTS) for n in range(1, ATTEMPTS + 1)
    ]


class _OutageOnFirstSubmit:
    """The run's reporter: starts a 3 s read outage at the emulator once the first job is submitted
    (its control route), then hands every event to the notifications."""

    def __init__(self, emu_url: str, inner: NotifyingReporter) -> None:
        self.emu_url, self.inner, self.started = emu_url, inner, False

    def event(self, kind: RunEvent, job: Any, **info: Any) -> None:
        if kind == RunEvent.SUBMITTED and not self.started:
            self.started = True
            # long against the 0.3 s threshold, so a loaded machine's slow breaker still sees it last
            resp = httpx.post(f"{self.emu_url}/_emulator/outage", json={"seconds": 3.0}, timeout=30)
            assert resp.json()["active"] is True
        self.inner.event(kind, job, **info)


def test_fal_unreachable_past_the_threshold_is_posted_and_then_its_end(tmp_path, media, emulator_factory, receiver):
    """A read outage of 3 s against a 0.3 s threshold."""
    bench = make_bench(tmp_path, media, emulator_factory(), clips=1)
    env = _env(bench, receiver.url("/ok"), BATCH_RUNNER_NOTIFY_OUTAGE_AFTER_S="0.3")
    ops = ops_from_env(env)
    assert ops.notify_secret == Secret(SECRET)
    audit: list[tuple[str, dict[str, Any]]] = []
    notifier = Notifier(ops, lambda kind, **d: audit.append((kind, d)), backoff_s=0.05)
    notifying = NotifyingReporter(notifier, ops.notify_outage_after_s)
    try:
        summary = bench.run(
            reporter=_OutageOnFirstSubmit(bench.emulator.url, notifying), outage_pause_s=0.2, outage_pause_max_s=0.4
        )
        notifying.run_ended(summary.to_json())
    finally:
        notifier.close()
    kinds = [e["kind"] for e in receiver.events()]
    assert kinds == ["fal.unreachable", "fal.reachable", "run.finished"], kinds
    unreachable = receiver.events()[0]
    assert "unreachable for over 0.3 s" in unreachable["message"] and unreachable["run"] == summary.run
    assert summary.counts == {"succeeded": 2} and audit == []


def test_a_short_outage_says_nothing(receiver):
    ops = ops_from_env({"BATCH_RUNNER_NOTIFY_URLS": receiver.url("/ok"), "BATCH_RUNNER_NOTIFY_SECRET": SECRET})
    notifier = Notifier(ops, lambda kind, **d: None)
    notifying = NotifyingReporter(notifier, outage_after_s=5)
    notifying.event(RunEvent.START, None, run="r", total=0)
    notifying.event(RunEvent.OUTAGE, None, message="502")
    notifying.event(RunEvent.RESUMED, None, message="back")
    notifier.close()
    assert receiver.events() == []


def test_uncertain_jobs_of_a_long_work_are_told_coalesced_and_never_twice(receiver):
    ops = ops_from_env({"BATCH_RUNNER_NOTIFY_URLS": receiver.url("/ok"), "BATCH_RUNNER_NOTIFY_SECRET": SECRET})
    notifier = Notifier(ops, lambda kind, **d: None)
    notifying = NotifyingReporter(notifier, outage_after_s=5, coalesce_s=0.2)
    notifying.event(RunEvent.START, None, run="w", total=0)
    for job_id in (7, 9):
        notifying.event(RunEvent.UNCERTAIN, SimpleNamespace(id=job_id), error="dropped")  # type: ignore[arg-type]
    deadline = time.monotonic() + 30
    while not receiver.events() and time.monotonic() < deadline:
        time.sleep(0.05)
    failed = [{"job": 7, "state": "uncertain"}, {"job": 11, "state": "uncertain"}, {"job": 3, "state": "failed"}]
    notifying.run_ended({"run": "w", "failed": failed, "jobs": {"uncertain": 3, "failed": 1}})
    notifier.close()
    told = [(e["kind"], e.get("jobs")) for e in receiver.events()]
    assert told == [("jobs.uncertain", [7, 9]), ("run.finished", None), ("jobs.uncertain", [11])]
