"""The rest of issue 10's promises, each against the emulator over real HTTP: a full disk is a job
fault, uncertain jobs without an admin key are left as they are and said so, the warning
threshold speaks once per run, and a bug in a worker thread lets its job go safely."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batch_runner import resolve, runner
from batch_runner.cli import cli
from batch_runner.config import Secret
from batch_runner.db.ledger import Scope
from batch_runner.domain import JobState
from batch_runner.errors import AuthError, JobsFailedError
from tests.integration.run_helpers import REFRAME_MANIFEST, make_bench


def emulator_bill(bench) -> int:
    return sum(int(Decimal(r["cost_usd"]) * 1_000_000) for r in bench.emulator_log() if r.get("cost_usd"))


def ledger(bench) -> int:
    return int(bench.sql("select coalesce(sum(billed_micro_usd), 0) from attempts")[0][0])


def fal_requests(bench) -> int:
    return len([r for r in bench.emulator_log() if r["request_id"]])


# --------------------------------------------------------------------------- a full disk


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[None]:
    """A real file system of `size` bytes at `path` (tmpfs): writes past it fail with ENOSPC."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()[:200]}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_fails_the_job_billed_leaves_no_part_and_retry_fetches_it_free(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(), clips=1)
    with small_disk(tmp_path / "out", "8k"):  # the folder fits, an output does not
        summary = bench.run()
        assert summary.counts == {"failed": 2} and isinstance(summary.exit_error(), JobsFailedError)
        assert all("No space left" in f["error"] or "full" in f["error"] for f in summary.failed), summary.failed
        assert all("without paying again" in f["error"] for f in summary.failed)
        assert not list((tmp_path / "out").rglob("*.part")) and not list((tmp_path / "out").rglob("*.mp4"))
    assert ledger(bench) == emulator_bill(bench) == 2 * 300_000  # fal's bill is recorded
    assert bench.sql("select count(*) from attempts where output_url is null") == [(0,)]

    jobs = runner.select_jobs(bench.repo, ["b"], [JobState.FAILED], [])
    plan = runner.retry_plan(bench.repo, jobs, [JobState.FAILED])
    assert [i.how for i in plan] == ["redeliver", "redeliver"] and sum(i.may_pay_micro_usd for i in plan) == 0
    runner.retry_jobs(bench.repo, jobs, [JobState.FAILED])
    again = bench.run(manifest=False, batches=["b"])
    assert again.counts == {"succeeded": 2} and again.billed_micro_usd == 0
    assert fal_requests(bench) == 2 and ledger(bench) == emulator_bill(bench) == 2 * 300_000
    assert len(list((tmp_path / "out" / "b").glob("*.mp4"))) == 2


# --------------------------------------------------------------------------- no admin key


def _cli(bench, *args: str, **env: str) -> Any:
    base = {
        "BATCH_RUNNER_DB": bench.db_url,
        "BATCH_RUNNER_FAL_URL": bench.emulator.url,
        "FAL_KEY": "everyday-key",
        "FAL_ADMIN_KEY": "",
    }
    return CliRunner().invoke(cli, list(args), env={**base, **env}, catch_exceptions=False)


def test_uncertain_jobs_without_an_admin_key_are_left_as_they_are_and_the_hint_names_the_key(
    tmp_path, media, emulator_factory
):
    emu = emulator_factory(faults="drop_after_submit=1/1", admin_keys=frozenset({"the-admin-key"}))
    bench = make_bench(tmp_path, media, emu, clips=1)
    first = bench.run()
    assert first.counts == {"succeeded": 1, "uncertain": 1}
    before = bench.sql("select id, state from jobs order by id")
    # Let fal finish the lost request: a request still running would be adopted from fal's request
    # list, which needs no admin key; an ended one needs its billing events, which do.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        r["state"] != "COMPLETED" for r in bench.emulator_log() if r["request_id"]
    ):
        time.sleep(0.05)

    # A run settles its own uncertain jobs first: refused, it says so once and carries on.
    second = bench.run(manifest=False, batches=["b"])
    said = [i["message"] for k, _, i in bench.events if k == "warning" and "not settled" in i.get("message", "")]
    assert len(said) == 1 and "ADMIN key" in said[0] and "FAL_ADMIN_KEY" in said[0]
    assert second.counts == {} and second.batch_states.get("uncertain") == 1
    assert bench.sql("select id, state from jobs order by id") == before

    # `resolve` with the everyday key: one clear line, exit 9, nothing changed.
    with pytest.raises(AuthError) as info:
        resolve.resolve_jobs(bench.settings.with_overrides(fal_key=Secret("everyday-key")), bench.repo, ["b"])
    assert "FAL_ADMIN_KEY" in (info.value.hint or "") and info.value.exit_code == 9
    done = _cli(bench, "resolve", "--batch", "b")
    assert done.exit_code == 9 and "FAL_ADMIN_KEY" in done.output and "Traceback" not in done.output
    assert "everyday-key" not in done.output
    assert bench.sql("select id, state from jobs order by id") == before

    # With the admin key, fal's records settle it: adopted, billed once.
    done = _cli(bench, "resolve", "--batch", "b", FAL_ADMIN_KEY="the-admin-key")
    assert done.exit_code == 0, done.output
    assert "the-admin-key" not in done.output
    third = bench.run(manifest=False, batches=["b"])
    assert third.counts == {"succeeded": 1}
    assert fal_requests(bench) == 2 and ledger(bench) == emulator_bill(bench) == 2 * 300_000


# --------------------------------------------------------------------------- the warning threshold


WARN_MANIFEST = (
    REFRAME_MANIFEST
    + """budget:
  warn_at_usd: "0.50"
"""
)


def test_the_warning_threshold_speaks_once_per_run_however_many_jobs_cross_it(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(concurrency=4), clips=3, manifest_text=WARN_MANIFEST)
    first = bench.run(concurrency=4)  # 6 jobs × $0.30: jobs 2 to 6 are all past $0.50
    assert first.counts == {"succeeded": 6}

    def said() -> list[str]:
        return [i["message"] for k, _, i in bench.events if k == "warning" and "warning threshold" in i["message"]]

    assert len(said()) == 1
    assert bench.sql("select count(*) from events where kind = 'run.budget_warning'") == [(1,)]

    bench.events.clear()
    from batch_runner.media import make_clip

    for i in (3, 4):  # tomorrow's sources: a new run, a new warning
        make_clip(
            tmp_path / "media" / f"clip{i}.mp4",
            duration="5",
            size="64x36",
            rate=50,
            pattern=("pal100bars", "smptehdbars")[i - 3],
            audio=False,
        )
    second = bench.run(concurrency=4)
    assert second.counts == {"succeeded": 4}
    assert len(said()) == 1
    assert bench.sql("select count(*) from events where kind = 'run.budget_warning'") == [(2,)]


# --------------------------------------------------------------------------- a bug in a worker thread


class BuggyDisplay:
    """A progress display with a bug: it raises on the chosen event kinds, `times` times. It is
    the reporter a run is handed (its display), so nothing of the runner itself is replaced."""

    def __init__(self, kinds: set[str], times: int) -> None:
        self.kinds, self.left, self.events = kinds, times, []
        self.lock = threading.Lock()

    def event(self, kind: str, job: dict[str, Any], **info: Any) -> None:
        with self.lock:
            self.events.append((kind, job.id if job else None, info))
            if kind in self.kinds and self.left > 0:
                self.left -= 1
                raise RuntimeError("display bug")


@pytest.mark.parametrize("kind", ["submitted", "succeeded", "queued"])
def test_a_worker_thread_bug_lets_its_job_go_safely_and_the_run_says_so(tmp_path, media, emulator_factory, kind):
    # fal runs one at a time: the second job is surely seen queued at fal
    bench = make_bench(tmp_path, media, emulator_factory(speed=200, concurrency=1), clips=1)
    display = BuggyDisplay({kind}, times=1)
    summary = bench.run(reporter=display)
    assert summary.counts == {"succeeded": 2}, summary.to_json()
    assert len(summary.unexpected) == 1 and "RuntimeError: display bug" in summary.unexpected[0]
    assert summary.to_json()["unexpected_errors"] == summary.unexpected
    assert [k for k, _, _ in display.events].count("error") == 1
    assert fal_requests(bench) == 2 and ledger(bench) == emulator_bill(bench) == 2 * 300_000  # paid once each
    assert len(list((tmp_path / "out" / "b").glob("*.mp4"))) == 2


def test_five_worker_thread_bugs_stop_the_run_and_the_next_run_finishes_without_paying_twice(
    tmp_path, media, emulator_factory
):
    bench = make_bench(tmp_path, media, emulator_factory(speed=200), clips=3)  # 6 jobs
    # One worker thread, so exactly five bugs happen before the stop: with two, the job the other
    # thread already has in hand can raise a sixth before the stop is seen (seen under CPU load).
    summary = bench.run(reporter=BuggyDisplay({"submitted"}, times=100), concurrency=1)
    assert len(summary.unexpected) == 5 and summary.error is not None
    assert "5 unexpected errors" in summary.error.message
    assert bench.sql("select count(*) from jobs where state in ('claimed', 'downloading')") == [(0,)]
    again = bench.run(manifest=False, batches=["b"])
    assert again.exit_error() is None and not again.unexpected
    assert bench.sql("select count(*) from jobs where state = 'succeeded'") == [(6,)]
    assert fal_requests(bench) == 6 and ledger(bench) == emulator_bill(bench) == 6 * 300_000


# --------------------------------------------------------------------------- no billable units


FAL_CHARGES_MORE = """name: fal-actual
version: "2026-11-21"
currency: USD
endpoints:
  luma/agent/ray/v3.2/reframe:
    unit: second
    prices: {540p: "0.07", 720p: "0.14", 1080p: "0.42"}
    verified: true
    source: "what this pretend fal account is charged"
"""


def test_without_billable_units_the_ledger_comes_from_fals_billing_events(tmp_path, media, emulator_factory):
    """fal does not document x-fal-billable-units for API users. Without it, the run records our
    price table's figure marked provisional, and fal's billing events (admin key) replace it;
    here fal charges $0.07/s where our table says $0.06/s, so only fal's figure balances."""
    (tmp_path / "fal-prices.yaml").write_text(FAL_CHARGES_MORE)
    emu = emulator_factory(
        send_billable_units=False, prices_path=tmp_path / "fal-prices.yaml", admin_keys=frozenset({"the-admin-key"})
    )
    bench = make_bench(tmp_path, media, emu, clips=1)
    first = bench.run()
    assert first.counts == {"succeeded": 2} and first.billed_micro_usd == 2 * 300_000  # 5 s × $0.06
    assert emulator_bill(bench) == 2 * 350_000
    assert bench.sql("select distinct price_source from attempts") == [
        ("provisional: fal-published@2026-11-21 on the verified output",)
    ]

    # No admin key: resolve says which key it needs and the provisional figures stay, marked.
    assert _cli(bench, "resolve", "--batch", "b").exit_code == 9
    assert ledger(bench) == 2 * 300_000

    done = _cli(bench, "resolve", "--batch", "b", "--json", FAL_ADMIN_KEY="the-admin-key")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["counts"]["billed"] == 2
    assert ledger(bench) == emulator_bill(bench) == 2 * 350_000
    assert bench.sql("select distinct price_source from attempts") == [("fal billing events",)]
    assert bench.sql("select sum(billed_micro_usd) from jobs") == [(2 * 350_000,)]
    again = _cli(bench, "resolve", "--batch", "b", FAL_ADMIN_KEY="the-admin-key")  # nothing left to settle
    assert again.exit_code == 0 and ledger(bench) == 2 * 350_000


def test_a_run_settles_its_batches_provisional_bills_before_it_starts(tmp_path, media, emulator_factory):
    (tmp_path / "fal-prices.yaml").write_text(FAL_CHARGES_MORE)
    emu = emulator_factory(send_billable_units=False, prices_path=tmp_path / "fal-prices.yaml")
    bench = make_bench(tmp_path, media, emu, clips=1)
    bench.run()
    assert ledger(bench) == 2 * 300_000
    bench.run(manifest=False, batches=["b"])  # the next night: its own batch's bills first
    assert ledger(bench) == emulator_bill(bench) == 2 * 350_000


def test_report_shows_what_is_still_our_figure_until_fal_confirms_it(tmp_path, media, emulator_factory):
    from batch_runner import display, reports

    bench = make_bench(tmp_path, media, emulator_factory(send_billable_units=False), clips=1)
    bench.run()
    report = reports.build(bench.repo, Scope(batches=("b",)), group_by="endpoint")
    assert report.total.unconfirmed == report.total.billed == 2 * 300_000
    assert "$0.60 priced from our price table" in display.report_table(report)
    assert json.loads(reports.render(report, "json"))["total"]["unconfirmed_usd"] == "0.60"
    resolve.resolve_jobs(bench.settings, bench.repo, ["b"])
    report = reports.build(bench.repo, Scope(batches=("b",)), group_by="endpoint")
    assert report.total.unconfirmed == 0 and "price table because" not in display.report_table(report)


def test_a_key_id_and_secret_pair_is_sent_as_fal_client_sends_it(tmp_path, media, emulator_factory):
    emu = emulator_factory(keys=frozenset({"the-id:the-secret"}))
    bench = make_bench(tmp_path, media, emu, clips=1)
    done = _cli(
        bench, "run", str(bench.manifest), "--json", FAL_KEY=None, FAL_KEY_ID="the-id", FAL_KEY_SECRET="the-secret"
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["jobs"] == {"succeeded": 2} and "the-secret" not in done.output
    half = _cli(bench, "run", str(bench.manifest), FAL_KEY=None, FAL_KEY_ID="the-id")
    assert half.exit_code == 3 and "FAL_KEY_ID is set but FAL_KEY_SECRET is not" in half.output


# --------------------------------------------------------------------------- what fal promises


def test_an_output_2px_off_the_convention_is_delivered_with_a_warning_and_retry_leaves_it(
    tmp_path, media, emulator_factory
):
    bench = make_bench(tmp_path, media, emulator_factory(output_skew_px=(2, 0)), clips=1)
    summary = bench.run()
    assert summary.counts == {"succeeded": 2} and summary.exit_error() is None
    assert fal_requests(bench) == 2 and ledger(bench) == emulator_bill(bench) == 2 * 300_000
    sidecars = sorted((tmp_path / "out" / "b").glob("*.mp4.json"))
    notes = [json.loads(p.read_text())["check_warnings"] for p in sidecars]
    assert notes == [
        ["542x540, where the output convention expects 540x540"],
        ["542x960, where the output convention expects 540x960"],
    ]
    assert runner.select_jobs(bench.repo, ["b"], [JobState.FAILED], []) == []  # nothing for retry to pay again


def test_an_output_of_the_wrong_aspect_ratio_breaks_fals_promise_and_fails_billed(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(output_skew_px=(200, 0)), clips=1)
    summary = bench.run()
    assert summary.counts == {"failed": 2}
    assert all("output check failed: asked for" in f["error"] for f in summary.failed)
    assert ledger(bench) == emulator_bill(bench) == 2 * 300_000
