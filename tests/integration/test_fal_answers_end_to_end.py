"""fal's documented answers, from the emulator over real HTTP through the runner's client and
decisions: a request cancelled at fal (client_cancelled), a start timeout (504, user), and the
status stream's comment keep-alives."""

from __future__ import annotations

import threading
import time

import httpx
from click.testing import CliRunner

from batch_runner.api.answers import Completed, Phase, parse_status
from batch_runner.api.client import FalClient
from batch_runner.cli import cli
from batch_runner.config import FalHosts, Secret
from batch_runner.outcome import Action, Bill, decide
from tests.conftest import EMU_KEY
from tests.integration.emu_helpers import submit, wait_done
from tests.integration.run_helpers import make_bench

T2V_ID = "luma/agent/ray/v3.2/text-to-video"
ONE_PROMPT = """batch: {batch}
endpoint: ray-3.2/text-to-video
defaults:
  resolution: 540p
sources:
  - params: {{prompt: "a harbour at dawn"}}
    name: p1
output_root: out
output: "{{batch}}/{{stem}}.mp4"
"""


def _cancel_when_running(emu_url: str, done: threading.Event, answers: list) -> None:
    """Another client of the same account cancels the request once fal runs it (PUT …/cancel,
    the owner/alias URL fal's clients build: fal-client `from_request_id`, fal-js queue.ts)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not done.is_set():
        rows = httpx.get(f"{emu_url}/_emulator/requests", timeout=30).json()["requests"]
        running = [r for r in rows if r.get("state") == "IN_PROGRESS"]
        if running:
            resp = httpx.put(
                f"{emu_url}/luma/agent/requests/{running[0]['request_id']}/cancel",
                headers={"Authorization": "Key another-client"},
                timeout=30,
            )
            answers.append((resp.status_code, resp.json()))
            return
        time.sleep(0.02)


def test_a_request_cancelled_at_fal_while_running_ends_the_job_cancelled_and_retry_leaves_it(
    tmp_path, media, emulator_factory
):
    emu = emulator_factory(speed=10)  # about 4.5 s of work: time to cancel it while it runs
    bench = make_bench(tmp_path, media, emu, clips=0, manifest_text=ONE_PROMPT)
    done, answers = threading.Event(), []
    canceller = threading.Thread(target=_cancel_when_running, args=(emu.url, done, answers), daemon=True)
    canceller.start()
    summary = bench.run()
    done.set()
    canceller.join(10)
    assert answers == [(202, {"status": "CANCELLATION_REQUESTED"})]
    assert summary.counts == {"cancelled": 1}
    [(state, reason)] = bench.sql("select state, last_error from jobs")
    assert state == "cancelled" and "client_cancelled" in (reason or "")
    assert bench.sql("select coalesce(sum(billed_micro_usd), 0) from attempts") == [(0,)]
    [row] = [r for r in bench.emulator_log() if r["request_id"]]
    assert (row["state"], row["error_type"], row["cost_usd"]) == ("CANCELLED", "client_cancelled", None)

    env = {"BATCH_RUNNER_DB": bench.db_url, "BATCH_RUNNER_FAL_URL": emu.url, "FAL_KEY": "cli-test-key"}
    result = CliRunner().invoke(cli, ["retry", "--batch", "b"], env=env, catch_exceptions=False)
    assert result.exit_code == 0 and result.stdout.strip().endswith(
        "0 job(s) queued again; run `batch-runner run` to process them; at most $0.00 more"
    )
    assert bench.sql("select state from jobs") == [("cancelled",)]


def test_a_start_timeout_result_is_a_failure_at_no_cost(emulator_factory):
    """fal: 504 with X-Fal-Request-Timeout-Type: user when a request has not started by its
    X-Fal-Request-Timeout (https://docs.fal.ai/documentation/model-apis/common-parameters)."""
    emu = emulator_factory(speed=1, concurrency=1)
    with httpx.Client(base_url=emu.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=30) as api:
        busy = submit(api, T2V_ID, {"prompt": "holds the only runner"})
        late = api.post(f"/{T2V_ID}", json={"prompt": "late"}, headers={"X-Fal-Request-Timeout": "0.3"}).json()
        status = parse_status(wait_done(api, late["status_url"]))
        api.put(busy["cancel_url"])
    client = FalClient(FalHosts.for_url(emu.url), Secret("k"))
    try:
        result = client.result(late["response_url"])
    finally:
        client.close()
    assert isinstance(status, Completed) and result.reply.status == 504 and result.reply.user_timeout
    decision = decide(Phase.RESULT, result.reply, completed=status, result=result)
    assert (decision.action, decision.bill) == (Action.FAILED, Bill.NOTHING)


def test_the_runner_reads_the_status_stream_through_comment_keep_alives(emulator_factory):
    emu = emulator_factory(speed=20, keepalive_s=0.02)  # many comment lines between status events
    with httpx.Client(base_url=emu.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=30) as api:
        body = submit(api, T2V_ID, {"prompt": "streamed"})
    client = FalClient(FalHosts.for_url(emu.url), Secret("k"))
    try:
        events = list(client.stream(body["status_url"], logs=True))
    finally:
        client.close()
    assert isinstance(events[-1], Completed) and events[-1].error is None
    messages = [entry["message"] for e in events for entry in getattr(e, "logs", ())]
    assert len(messages) == len(set(messages)) and "Request completed" in messages  # each log entry once
