"""`prune`: finished jobs' attempts and events past the horizon go, their figures stay in daily
rollups, so `report --json` shows the same totals before and after on both backends; job rows
stay, so enqueueing the manifest again adds nothing (never pay twice)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from click.testing import CliRunner

from batch_runner import planner
from batch_runner.cli import cli
from batch_runner.db import prune as db_prune
from batch_runner.pricing import load_price_table
from tests.integration.run_helpers import make_bench

AGO = timedelta(days=100)  # every row is moved this far back in time, past the 90-day horizon
# the timestamps prune looks at, per table
TIMES = {
    "jobs": ("created_at", "updated_at"),
    "attempts": ("created_at", "submitted_at", "finished_at", "sent_at"),
    "events": ("at",),
    "probes": ("probed_at",),
    "runs": ("started_at", "finished_at"),
}


def _age(bench, where: str = "") -> None:
    """Move rows back in time, as if they were made 100 days ago (only jobs matching `where`)."""
    for name, columns in TIMES.items():
        jobs_only = where and name in ("jobs", "attempts", "events")
        key = "id" if name == "jobs" else "job_id"
        cond = f" where {key} in (select id from jobs where {where})" if jobs_only else ""
        for column in columns:
            rows = bench.sql(f"select id, {column} from {name}{cond}")
            for row_id, when in rows:
                if when is not None:
                    moved = (when if isinstance(when, datetime) else datetime.fromisoformat(when)) - AGO
                    bench.sql(f"update {name} set {column} = ? where id = ?", moved, row_id)


def _cli(bench, *args: str):
    result = CliRunner().invoke(cli, list(args), env={"BATCH_RUNNER_DB": bench.db_url})
    assert result.exit_code == 0, result.stderr
    return result


def _reports(bench) -> dict[str, dict]:
    """report --json grouped several ways, over everything and over the aged days as a window."""
    day = (datetime.now(UTC) - AGO).date()
    window = ("--since", day.isoformat(), "--until", (day + timedelta(days=2)).isoformat())
    out = {}
    for group, name, extra in (
        ("day", "all", ()),
        ("day", "window", window),
        ("endpoint", "all", ()),
        ("batch", "window", window),
        ("resolution", "all", ()),
    ):
        got = json.loads(_cli(bench, "report", "--group-by", group, "--format", "json", *extra).stdout)
        out[f"{group}/{name}"] = {"total": got["total"], "groups": got["groups"]}
    return out


def _ran_with_retries(tmp_path, media, emulator_factory, db_url):
    bench = make_bench(tmp_path, media, emulator_factory(faults="fail=1/2"), clips=2, db_url=db_url)
    summary = bench.run()
    assert summary is not None
    assert bench.sql("select count(*) from attempts where number > 1")[0][0] >= 1  # retry spend to roll up
    return bench


def test_prune_keeps_report_totals_and_job_rows(tmp_path, media, emulator_factory, db_url):
    bench = _ran_with_retries(tmp_path, media, emulator_factory, db_url)
    _age(bench)
    before = _reports(bench)
    total = before["day/window"]["total"]
    assert total == before["day/all"]["total"] and total["jobs"] == 4  # the window holds the aged days
    assert min(Decimal(total[k]) for k in ("billed_usd", "retry_spend_usd", "delivered_seconds")) > 0
    jobs = bench.sql("select id, key, state from jobs order by id")
    attempts, events = bench.sql("select count(*) from attempts")[0][0], bench.sql("select count(*) from events")[0][0]

    dry = json.loads(_cli(bench, "prune", "--older-than", "90d", "--dry-run", "--json").stdout)
    assert (dry["dry_run"], dry["jobs_rolled_up"], dry["attempts"]) == (True, len(jobs), attempts)
    assert dry["probes"] == bench.sql("select count(*) from probes")[0][0] > 0
    assert bench.sql("select count(*) from attempts")[0][0] == attempts  # the dry run removed nothing

    done = _cli(bench, "prune", "--older-than", "90d", "--json")
    result = json.loads(done.stdout)
    assert (result["jobs_rolled_up"], result["attempts"], result["probes"]) == (len(jobs), attempts, dry["probes"])
    assert 0 < result["events"] <= events and result["vacuumed"] == db_url.startswith("sqlite")
    assert bench.sql("select count(*) from attempts") == [(0,)]
    assert bench.sql("select count(*) from events where job_id is not null") == [(0,)]
    assert bench.sql("select id, key, state from jobs order by id") == jobs  # job rows stay
    assert bench.sql("select count(*) from jobs where pruned_at is null") == [(0,)]

    after = _reports(bench)
    for name in before:
        assert after[name]["total"] == before[name]["total"], name
        if not name.startswith("resolution"):  # rollups keep no resolution: those go to "(pruned)"
            assert after[name]["groups"] == before[name]["groups"], name
    assert list(after["resolution/all"]["groups"]) == ["(pruned)"]

    again = planner.enqueue(planner.plan(bench.manifest, bench.settings, load_price_table(), bench.repo), bench.repo)
    assert again.added == 0  # the pruned jobs are still known: nothing is paid twice
    assert json.loads(_cli(bench, "prune", "--older-than", "90d", "--json").stdout)["jobs_rolled_up"] == 0


def test_prune_leaves_recent_jobs_and_merges_rollups_across_transactions(tmp_path, media, emulator_factory):
    bench = _ran_with_retries(tmp_path, media, emulator_factory, None)
    old = "source like '%clip0%'"
    _age(bench, old)
    before = _reports(bench)
    recent = bench.sql("select count(*) from attempts where job_id in (select id from jobs where not (" + old + "))")
    horizon = datetime.now(UTC) - timedelta(days=90)
    counts = db_prune.prune(bench.repo.engine, horizon, jobs_per_tx=1)  # one job per transaction
    assert counts.jobs == bench.sql(f"select count(*) from jobs where {old}")[0][0] == 2
    assert bench.sql("select count(*) from attempts") == recent  # the recent jobs' attempts stay
    assert bench.sql("select count(*) from jobs where pruned_at is not null and not (" + old + ")") == [(0,)]
    assert bench.sql("select sum(jobs) from rollups") == [(2,)]
    after = _reports(bench)
    assert {k: v["total"] for k, v in after.items()} == {k: v["total"] for k, v in before.items()}


def test_prune_refuses_an_age_it_cannot_read(sqlite_url):
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "prune", "--older-than", "90 days"])
    assert result.exit_code == 2
    assert "is not an age like 90d" in result.stderr


def test_prune_keeps_jobs_whose_bill_fal_has_not_confirmed(tmp_path, media, emulator_factory):
    """Without billable units the bill is provisional until `resolve` reads fal's billing events:
    such a job keeps its attempts (resolve must still find them), however old."""
    bench = make_bench(tmp_path, media, emulator_factory(send_billable_units=False), clips=1)
    bench.run()
    assert all(s.startswith("provisional: ") for (s,) in bench.sql("select price_source from attempts"))
    _age(bench)
    attempts = bench.sql("select count(*) from attempts")
    assert json.loads(_cli(bench, "prune", "--older-than", "90d", "--json").stdout)["jobs_rolled_up"] == 0
    assert bench.sql("select count(*) from attempts") == attempts
    assert bench.sql("select count(*) from jobs where pruned_at is not null") == [(0,)]
