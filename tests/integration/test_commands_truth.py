"""What `show`, `retry` and `cancel` say, on both backends: the audit trail's from-states chain
without a gap, and the JSON shapes carry money as decimal strings, objects as objects."""

from __future__ import annotations

import itertools
import json
import re

from click.testing import CliRunner

from batch_runner.cli import cli
from tests.integration.run_helpers import make_bench

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00")
MONEY = re.compile(r"\d+\.\d{2,6}")


def _cli(bench, *args: str):
    env = {"BATCH_RUNNER_DB": bench.db_url, "BATCH_RUNNER_FAL_URL": bench.emulator.url, "FAL_KEY": "test-key"}
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _show(bench, job: int) -> dict:
    code, out, err = _cli(bench, "show", str(job), "--json")
    assert code == 0, err
    return json.loads(out)


def _trail(history: dict) -> list[str]:
    """The job's states as its audit trail tells them; each from-state is the previous to-state."""
    moves = [(e["from_state"], e["to_state"]) for e in history["events"] if e["to_state"] is not None]
    for (_, before), (after, _) in itertools.pairwise(moves):
        assert after == before, moves
    return [moves[0][0] or "new", *(to for _, to in moves)] if moves else []


def test_audit_trails_and_json_of_a_succeeded_a_retried_and_a_cancelled_job(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(tmp_path, media, emulator_factory(), clips=2, db_url=db_url)  # four jobs
    assert _cli(bench, "enqueue", str(bench.manifest))[0] == 0
    code, out, err = _cli(bench, "cancel", "--job", "2", "--job", "3", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {"cancelled_queued": 2, "cancelled_at_fal": 0, "stop_requested": 0, "uncertain": None}
    code, out, err = _cli(bench, "retry", "--state", "cancelled", "--job", "2", "--json")
    assert (code, err) == (0, "")
    retried = json.loads(out)
    assert (retried["dry_run"], retried["queued"], [j["job"] for j in retried["jobs"]]) == (False, 1, [2])
    assert MONEY.fullmatch(retried["may_pay_usd"]) and retried["jobs"][0]["how"] == "resubmit"
    assert bench.run(manifest=False).counts == {"succeeded": 3}

    lifecycle = ["queued", "submitting", "submitted", "in_progress", "downloading", "succeeded"]
    assert _trail(_show(bench, 1)) == ["new", *lifecycle]
    assert _trail(_show(bench, 2)) == ["new", "queued", "cancelled", *lifecycle]
    assert _trail(_show(bench, 3)) == ["new", "queued", "cancelled"]

    history = _show(bench, 1)
    job = history["job"]
    assert job["state"] == "succeeded" and job["batch_id"] == 1 and job["key"]
    assert isinstance(job["params"], dict) and job["params"]["aspect_ratio"] in ("9:16", "1:1")
    assert isinstance(job["tags"], list)
    assert MONEY.fullmatch(job["estimate_usd"]) and MONEY.fullmatch(job["billed_usd"])
    assert not any(k.endswith("micro_usd") for k in job) and "input_json" not in job
    assert ISO_UTC.fullmatch(job["created_at"]) and ISO_UTC.fullmatch(job["updated_at"])
    (attempt,) = history["attempts"]
    assert attempt["state"] == "succeeded" and MONEY.fullmatch(attempt["billed_usd"])
    assert attempt["billed_usd"] == job["billed_usd"] and ISO_UTC.fullmatch(attempt["submitted_at"])
    assert all(isinstance(e["details"], dict) and ISO_UTC.fullmatch(e["at"]) for e in history["events"])


def test_show_and_retry_name_a_missing_job_or_batch_with_exit_3(tmp_path, media, db_url):
    bench = make_bench(tmp_path, media, type("E", (), {"url": "http://127.0.0.1:9"})(), clips=1, db_url=db_url)
    assert _cli(bench, "enqueue", str(bench.manifest))[0] == 0
    for args, said in [
        (["show", "99"], "no job matches '99'"),
        (["show", "x" * 500], "no job matches 'xxxxx"),
        (["retry", "--batch", "nightly-typo"], 'no batch named "nightly-typo"'),
        (["cancel", "--batch", "nightly-typo"], 'no batch named "nightly-typo"'),
        (["cancel", "--job", "99"], "no job matches 99"),
    ]:
        code, out, err = _cli(bench, *args)
        assert (code, out) == (3, ""), args
        assert err.startswith(f"Error: {said}") and "(" in err and len(err) < 300, err
