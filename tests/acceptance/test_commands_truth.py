"""Commands that say the truth: help texts, JSON shapes, samples, the codes of missing things."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from batch_runner.cli import cli
from tests.conftest import REPO


def _invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_samples_makes_every_clip_and_still_distinct_past_one_round_of_patterns(tmp_path: Path):
    code, out, err = _invoke("samples", str(tmp_path), "--clips", "6", "--images", "6", "--duration", "0.2")
    assert code == 0, err
    made = [Path(line) for line in out.splitlines()]
    assert [p.name for p in made] == [f"clip0{i}.mp4" for i in range(1, 7)] + [f"still0{i}.png" for i in range(1, 7)]
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in made}
    assert len(digests) == 12


def _help(*cmd: str) -> str:
    code, out, _ = _invoke(*cmd, "--help")
    assert code == 0
    return out


def test_only_the_top_level_help_lists_every_exit_code():
    top = _help()
    assert "  10   reconcile found spend" in top and "  130  interrupted" in top
    commands = []
    for name, cmd in cli.commands.items():
        subs = getattr(cmd, "commands", None)
        commands += [(name, sub) for sub in subs] if subs else [(name,)]
    for cmd in commands:
        text = _help(*cmd)
        assert "all exit codes: batch-runner --help" in text.lower(), cmd
        assert "  0    success" not in text and "  2    usage error" not in text, cmd


def test_each_command_lists_the_exit_codes_it_can_return():
    show = _help("show")
    assert "  3    no job matches JOB" in show and "  6    database" in show
    assert "  5 " not in show and "  9 " not in show and "  130 " not in show
    run = _help("run")
    assert all(f"  {c:<4} " in run for c in (1, 3, 4, 5, 6, 7, 8, 9, 130)) and "  10   " not in run
    assert "  10   reconcile" in _help("reconcile")
    assert "Exit codes (" not in _help("endpoints")


def test_work_help_speaks_of_the_batches_it_works_on_not_a_manifest():
    work = " ".join(_help("work").split())
    assert "manifest" not in work.lower()
    assert "Work on this batch's jobs only (repeatable) [default: every batch]" in work
    run = " ".join(_help("run").split())
    assert "[default: MANIFEST's batch; without MANIFEST, every batch]" in run


def test_db_current_json_says_the_revisions_and_whether_it_is_up_to_date(tmp_path: Path):
    db = tmp_path / "jobs.db"
    assert _invoke("--db", str(db), "db", "upgrade")[0] == 0
    code, out, err = _invoke("--db", str(db), "db", "current", "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert set(data) == {"current", "head", "up_to_date"}
    assert data["current"] == data["head"] and data["head"] and data["up_to_date"] is True


def test_plan_diff_max_cost_compares_what_the_plan_adds_not_the_whole_manifest(tmp_path: Path, media, monkeypatch):
    jobs = tmp_path / "jobs"
    shutil.copytree(REPO / "jobs", jobs, ignore=shutil.ignore_patterns("media"))
    (jobs / "media").mkdir()
    for i in (1, 2, 3):
        shutil.copy(media["c5"], jobs / "media" / f"clip0{i}.mp4")
    monkeypatch.setenv("BATCH_RUNNER_DB", str(tmp_path / "jobs.db"))
    assert _invoke("db", "upgrade")[0] == 0
    manifest = str(jobs / "nightly-reframe.yaml")
    assert _invoke("enqueue", manifest)[0] == 0  # six jobs, $3.60
    shutil.copy(media["c5_04"], jobs / "media" / "clip04.mp4")  # tonight adds two jobs: 6 started s × $0.12 each
    code, out, err = _invoke("plan", manifest, "--diff", "--max-cost", "2")
    assert code == 0, err
    code, out, err = _invoke("plan", manifest, "--diff", "--max-cost", "1", "--json")
    assert code == 5 and json.loads(out)["diff"]["added_cost_usd"] == "1.44"
    assert err.splitlines()[-1].startswith("Error: cost the plan adds $1.44 is over --max-cost $1.00")
    code, _, err = _invoke("plan", manifest, "--max-cost", "2")  # without --diff: the whole manifest
    assert code == 5 and "Error: estimated total $5.04 is over --max-cost $2.00" in err
