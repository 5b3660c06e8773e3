"""The real CLI on real manifests, media and databases: exit codes, stdout and stderr apart."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from batch_runner.cli import cli
from batch_runner.errors import EXIT_CODES
from tests.conftest import REPO, write

FAKE_KEY = "fal-test-key-0123456789abcdef"


@pytest.fixture
def project(tmp_path: Path, media) -> Path:
    """A copy of jobs/ with its media/ folder filled: three 5 s clips and three stills."""
    jobs = tmp_path / "jobs"
    shutil.copytree(REPO / "jobs", jobs, ignore=shutil.ignore_patterns("media"))
    (jobs / "media").mkdir()
    for i in (1, 2, 3):
        shutil.copy(media["c5"], jobs / "media" / f"clip0{i}.mp4")
        shutil.copy(media["image"], jobs / "media" / f"still0{i}.png")
    return tmp_path


@pytest.fixture
def br(tmp_path: Path, monkeypatch):
    """Run the CLI in-process against a SQLite file made by `db upgrade`, as a user would (an
    explicit --db is never created by itself); returns (exit code, stdout, stderr)."""
    db = tmp_path / "state" / "jobs.db"
    monkeypatch.setenv("BATCH_RUNNER_DB", str(db))
    monkeypatch.setenv("FAL_KEY", FAKE_KEY)
    assert CliRunner().invoke(cli, ["db", "upgrade"], catch_exceptions=False).exit_code == 0

    def run(*args: str, env: dict | None = None):
        result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    run.db = db  # type: ignore[attr-defined]
    return run


def test_endpoints_lists_every_endpoint_with_prices(br):
    code, out, err = br("endpoints", "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert len(data["endpoints"]) == 12 and data["price_table"] == "fal-published@2026-11-21"
    reframe = next(e for e in data["endpoints"] if e["alias"] == "ray-3.2/reframe")
    assert [p["usd"] for p in reframe["prices"]] == ["0.06", "0.12", "0.36"]
    assert reframe["billing"] == "per_started_source_second" and reframe["max_source_s"] == "30"
    t2v = next(e for e in data["endpoints"] if e["alias"] == "ray-2/text-to-video")
    assert {(p["resolution"], p["duration"]): p["usd"] for p in t2v["prices"]}[("1080p", "9s")] == "4.00"
    code, table, _ = br("endpoints")
    assert code == 0 and "luma/agent/ray/v3.2/reframe" in table and "$0.36 per second" in table


def test_plan_prices_every_job_and_writes_nothing(br, project):
    code, out, err = br("plan", str(project / "jobs/nightly-reframe.yaml"), "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["batch"] == "nightly-reframe" and plan["price_table"] == "fal-published@2026-11-21"
    assert len(plan["jobs"]) == 3 * 2 and plan["invalid"] == []
    for job in plan["jobs"]:
        assert set(job) >= {
            "key",
            "endpoint",
            "source",
            "params",
            "output",
            "duration_s",
            "billable_units",
            "unit",
            "estimated_cost_usd",
        }
        assert (job["duration_s"], job["billable_units"], job["estimated_cost_usd"]) == (5.0, "5", "0.60")
    expected = sum(Decimal(j["estimated_cost_usd"]) for j in plan["jobs"])
    assert Decimal(plan["total_estimated_cost_usd"]) == expected == Decimal("3.60")
    assert plan["by_endpoint"] == {"luma/agent/ray/v3.2/reframe": {"jobs": 6, "estimated_cost_usd": "3.60"}}
    assert plan["by_resolution"]["720p"]["jobs"] == 6
    assert "probed 3 source(s), 0 from cache" in err
    code, status, _ = br("status", "--json")
    assert json.loads(status) == {"batches": []}


def test_plan_table_shows_jobs_and_totals(br, project):
    code, out, _ = br("plan", str(project / "jobs/nightly-reframe.yaml"))
    assert code == 0
    rows = [line for line in out.splitlines() if line.endswith(".mp4")]
    assert (
        len(rows) == 6
        and rows[0].split()[1] == "clip01.mp4"
        and rows[0].endswith("nightly-reframe/clip01_9x16_720p.mp4")
    )
    assert "by endpoint" in out and "by resolution" in out and "$3.60" in out


def test_warm_plan_starts_no_ffprobe(br, project, monkeypatch, tmp_path):
    manifest = str(project / "jobs/nightly-reframe.yaml")
    assert br("plan", manifest)[0] == 0
    empty = tmp_path / "no-tools"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # ffprobe cannot be started at all now
    code, out, err = br("plan", manifest, "--json")
    assert code == 0, err
    assert "probed 0 source(s), 3 from cache" in err and len(json.loads(out)["jobs"]) == 6


def test_changed_source_is_probed_again(br, project, media):
    manifest = str(project / "jobs/nightly-reframe.yaml")
    br("plan", manifest)
    shutil.copy(media["c5_04"], project / "jobs/media/clip02.mp4")
    code, out, err = br("plan", manifest, "--json")
    assert code == 0
    assert "probed 1 source(s), 2 from cache" in err
    costs = {Path(j["source"]).name: j["estimated_cost_usd"] for j in json.loads(out)["jobs"]}
    assert costs["clip02.mp4"] == "0.72" and costs["clip01.mp4"] == "0.60"


@pytest.mark.parametrize(("limit", "code"), [("3.60", 0), ("3.59", 5)])
def test_plan_max_cost(br, project, limit, code):
    rc, out, err = br("plan", str(project / "jobs/nightly-reframe.yaml"), "--max-cost", limit)
    assert rc == code
    if code:
        assert err.strip().splitlines()[-1] == (
            "Error: estimated total $3.60 is over --max-cost $3.59 "
            "(reduce the matrix or the sources, or raise --max-cost)"
        )
        assert "total" in out  # the plan is still printed


def test_plan_reports_invalid_sources_and_exits_4(br, project, media):
    shutil.copy(media["truncated"], project / "jobs/media/broken.mp4")
    shutil.copy(media["c30_04"], project / "jobs/media/long.mp4")
    manifest = str(project / "jobs/nightly-reframe.yaml")
    code, out, err = br("plan", manifest, "--json")
    assert code == 4
    plan = json.loads(out)
    reasons = {Path(i["source"]).name: i["reason"] for i in plan["invalid"]}
    assert "truncated or corrupt" in reasons["broken.mp4"]
    assert "at most 30 s" in reasons["long.mp4"]
    assert all(Path(j["source"]).name not in reasons for j in plan["jobs"]) and len(plan["jobs"]) == 6
    assert "--skip-invalid" in err.splitlines()[-1]
    assert br("plan", manifest, "--skip-invalid")[0] == 0


def test_plan_accepts_a_30_second_source(br, project, media):
    shutil.copy(media["c30"], project / "jobs/media/clip04.mp4")
    code, out, _ = br("plan", str(project / "jobs/nightly-reframe.yaml"), "--json")
    long = [j for j in json.loads(out)["jobs"] if j["source"].endswith("clip04.mp4")]
    assert code == 0 and [j["estimated_cost_usd"] for j in long] == ["3.60", "3.60"]


def test_bad_manifest_is_one_line_on_stderr_and_exit_3(br, project):
    bad = write(
        project / "jobs/bad.yaml",
        "batch: b\nendpoint: ray-3.2/reframe\ndefaults:\n  prompt: p\n"
        "  aspect_ratio: 9x16\nsources: [media/clip01.mp4]\n",
    )
    code, out, err = br("plan", str(bad))
    assert (code, out) == (3, "")
    assert err == (
        f'Error: {bad}:5: aspect_ratio: "9x16" is not one of 3:4, 4:3, 1:1, 9:16, 16:9, 21:9 (did you mean "9:16"?)\n'
    )


def test_missing_manifest_is_exit_3(br, tmp_path):
    code, out, err = br("plan", str(tmp_path / "none.yaml"))
    assert code == 3 and out == "" and "none.yaml: file not found" in err


def test_every_example_manifest_plans(br, project):
    for manifest in sorted((project / "jobs").glob("*.yaml")):
        code, out, err = br("plan", str(manifest), "--json")
        assert code == 0, (manifest.name, err)
        assert json.loads(out)["jobs"], manifest.name


def test_enqueue_is_idempotent_and_adds_exactly_what_is_new(br, project, media):
    manifest = project / "jobs/nightly-reframe.yaml"
    assert br("enqueue", str(manifest), "--json")[1] and True
    code, out, _ = br("enqueue", str(manifest), "--json")
    assert json.loads(out) == {"batch": "nightly-reframe", "added": 0, "existing": 6, "invalid": 0}
    shutil.copy(media["c5_04"], project / "jobs/media/clip04.mp4")
    code, out, _ = br("enqueue", str(manifest), "--json")
    assert code == 0
    assert json.loads(out)["added"] == 2
    con = sqlite3.connect(br.db)
    before = con.execute("select id, key, input_json, state, estimate_micro_usd from jobs order by id").fetchall()
    manifest.write_text(manifest.read_text().replace("resolution: 720p", "resolution: 1080p"))
    code, out, _ = br("enqueue", str(manifest), "--json")
    assert code == 0
    assert json.loads(out)["added"] == 8
    after = con.execute("select id, key, input_json, state, estimate_micro_usd from jobs order by id").fetchall()
    assert after[:8] == before and len(after) == 16
    code, out, _ = br("status", "--json")
    assert code == 0
    [batch] = json.loads(out)["batches"]
    assert batch["jobs"] == 16 and batch["states"] == {"queued": 16}
    expected = 6 * 600_000 + 2 * 720_000 + 6 * 1_800_000 + 2 * 2_160_000
    assert Decimal(batch["estimated_cost_usd"]) == Decimal(expected) / 1_000_000


def test_enqueue_with_invalid_sources_writes_nothing(br, project, media):
    shutil.copy(media["text"], project / "jobs/media/notes.mp4")
    manifest = str(project / "jobs/nightly-reframe.yaml")
    code, out, err = br("enqueue", manifest)
    assert code == 4 and out == "" and "not a video file" in err
    assert json.loads(br("status", "--json")[1]) == {"batches": []}
    code, out, _ = br("enqueue", manifest, "--skip-invalid")
    assert code == 0 and "6 job(s) added" in out and "1 invalid source(s) skipped" in out


def test_status_table_and_unknown_batch(br, project):
    br("enqueue", str(project / "jobs/ray2-flash-reframe.yaml"))
    code, out, _ = br("status")
    assert code == 0 and out.startswith("flash-reframe") and "queued 9" in out
    code, out, err = br("status", "--batch", "nope")
    assert code == 3 and "no batch named" in err


def test_price_file_option_changes_estimates_and_names_the_table(br, project, tmp_path):
    prices = write(
        tmp_path / "acme.yaml",
        'name: acme\nversion: "2"\nendpoints:\n  ray-3.2/reframe:\n'
        '    unit: second\n    prices: {540p: "0.05", 720p: "0.10", 1080p: "0.30"}\n',
    )
    code, out, _ = br("--prices", str(prices), "plan", str(project / "jobs/nightly-reframe.yaml"), "--json")
    plan = json.loads(out)
    assert code == 0 and plan["price_table"] == "acme@2" and plan["total_estimated_cost_usd"] == "3.00"


def test_bad_max_cost_is_a_usage_error(br, project):
    code, _, err = br("plan", str(project / "jobs/nightly-reframe.yaml"), "--max-cost", "cheap")
    assert code == 2 and "not a USD amount" in err


def test_missing_ffprobe_exits_8(br, project, monkeypatch, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, out, err = br("plan", str(project / "jobs/nightly-reframe.yaml"))
    assert code == 8 and out == "" and "ffprobe is not installed" in err


def test_dead_database_exits_6(br, project):
    code, out, err = br("--db", "postgresql://postgres:hunter2@127.0.0.1:1/x", "status")
    assert code == 6 and out == "" and "cannot open database" in err and "hunter2" not in err


def test_db_upgrade_and_current_on_postgres(br, pg_empty_url):
    code, _, err = br("--db", pg_empty_url, "status")
    assert code == 6 and "batch-runner db upgrade" in err
    from batch_runner.db.engine import head_revision

    head = head_revision()
    code, out, _ = br("--db", pg_empty_url, "db", "upgrade")
    assert code == 0 and f"revision {head}" in out
    code, out, _ = br("--db", pg_empty_url, "db", "current")
    assert out.strip() == f"current {head}   head {head}"
    assert br("--db", pg_empty_url, "status")[0] == 0


def test_fal_key_never_appears_in_output_or_database(br, project):
    outputs = []
    for args in (
        ("-vv", "plan", str(project / "jobs/nightly-reframe.yaml")),
        ("-vv", "enqueue", str(project / "jobs/nightly-reframe.yaml")),
        ("status",),
        ("endpoints",),
    ):
        outputs.extend(br(*args)[1:])
    assert all(FAKE_KEY not in text for text in outputs)
    for path in br.db.parent.iterdir():
        assert FAKE_KEY.encode() not in path.read_bytes()


def test_every_command_has_help_and_is_in_the_readme():
    readme = (REPO / "README.md").read_text()
    commands = []
    for name, cmd in cli.commands.items():
        subs = getattr(cmd, "commands", None)
        commands += [(name, sub) for sub in subs] if subs else [(name,)]
    for cmd in commands:
        result = CliRunner().invoke(cli, [*cmd, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.stdout
        assert f"batch-runner {' '.join(cmd)}" in readme, f"README does not document {' '.join(cmd)}"


def test_every_exit_code_is_documented():
    readme = (REPO / "README.md").read_text()
    help_text = CliRunner().invoke(cli, ["--help"]).stdout
    for code in EXIT_CODES:
        assert f"| {code} |" in readme
        assert f"  {code:<4} " in help_text


def test_console_script_runs_as_a_subprocess(project, tmp_path):
    exe = Path(sys.executable).parent / "batch-runner"
    env = {"PATH": f"{exe.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}  # no --db: the default location
    proc = subprocess.run(
        [str(exe), "plan", str(project / "jobs/ray32-restyle.yaml"), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total_estimated_cost_usd"] == "5.40"
    assert (tmp_path / ".local/share/batch-runner/batch-runner.db").is_file()  # created by itself, folders too
    proc = subprocess.run(
        [str(exe), "plan", str(project / "jobs/missing.yaml")], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 3 and proc.stdout == ""


def test_ctrl_c_exits_130(project, tmp_path):
    import signal
    import socket

    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(1)
    manifest = write(
        project / "jobs/hang.yaml",
        "batch: h\nendpoint: ray-3.2/reframe\ndefaults:\n  prompt: p\n"
        f"  aspect_ratio: '1:1'\nsources:\n  - url: http://127.0.0.1:{hang.getsockname()[1]}/v.mp4\n",
    )
    exe = Path(sys.executable).parent / "batch-runner"
    assert CliRunner().invoke(cli, ["--db", str(tmp_path / "h.db"), "db", "upgrade"]).exit_code == 0
    proc = subprocess.Popen(
        [str(exe), "--db", str(tmp_path / "h.db"), "plan", str(manifest)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        hang.settimeout(60)
        conn, _ = hang.accept()  # the CLI is now waiting on our silent server
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130 and out == "" and "interrupted" in err
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        hang.close()


def test_plan_diff_shows_what_tonight_adds(br, project, media):
    manifest = project / "jobs/nightly-reframe.yaml"
    code, out, _ = br("plan", str(manifest), "--diff", "--json")
    diff = json.loads(out)["diff"]
    assert code == 0 and len(diff["new"]) == 6 and diff["added_cost_usd"] == "3.60"
    assert br("enqueue", str(manifest))[0] == 0
    shutil.copy(media["c5_04"], project / "jobs/media/clip04.mp4")  # a new source
    shutil.copy(media["c0_5"], project / "jobs/media/clip02.mp4")  # a changed source
    (project / "jobs/media/clip03.mp4").unlink()  # a removed source
    code, out, _ = br("plan", str(manifest), "--diff", "--json")
    diff = json.loads(out)["diff"]
    assert len(diff["new"]) == 2 and len(diff["changed"]) == 2 and len(diff["removed"]) == 2
    assert [u["state"] for u in diff["unchanged"]] == ["queued", "queued"]
    # clip04 (6 started seconds) twice, clip02 (1 started second) twice, at $0.12/s
    assert diff["added_cost_usd"] == "1.68"
    assert all(c["output"].endswith(("clip02_9x16_720p.mp4", "clip02_1x1_720p.mp4")) for c in diff["changed"])
    code, table, _ = br("plan", str(manifest), "--diff")
    assert code == 0 and table.count("  new ") == 2 and "bills again" in table and "removed" in table
    assert "tonight adds 2 new and 2 changed job(s): $1.68" in table


def test_help_names_every_environment_variable():
    import re

    help_text = CliRunner().invoke(cli, ["--help"]).stdout
    config_src = "".join(p.read_text() for p in (REPO / "batch_runner" / "config").glob("*.py"))
    for name in set(re.findall(r'"(BATCH_RUNNER_[A-Z_]+|FAL_KEY)"', config_src)):
        assert name in help_text, name
