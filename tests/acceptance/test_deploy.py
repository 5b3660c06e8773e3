"""The deployment recipes in deploy/ do what they say: each test reads the command out of the
file (a unit's ExecStart, the crontab line, the multi-machine script) and runs it against the
emulator, with only the installation paths moved into the test's folder."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from batch_runner import planner
from batch_runner.pricing import load_price_table
from tests.conftest import REPO
from tests.integration.run_helpers import Bench, make_bench

DEPLOY = REPO / "deploy"
EXE = REPO / ".venv" / "bin" / "batch-runner"
MANIFEST = "jobs/nightly-reframe.yaml"  # the path every recipe names, relative to /srv/videos
JOBS = 2  # one clip × two aspect ratios
POLLS = 3000


def _places(root: Path) -> dict[str, str]:
    """The installation paths the recipes name, and where the test puts each."""
    return {
        "/opt/batch-runner/.venv/bin/batch-runner": str(EXE),
        "/srv/videos": str(root),
        "/etc/batch-runner/env": str(root / "env"),
        "/var/lock/batch-runner-nightly.lock": str(root / "nightly.lock"),
        "/var/log/batch-runner/nightly.log": str(root / "nightly.log"),
    }


def _localise(text: str, root: Path) -> str:
    for installed, here in _places(root).items():
        text = text.replace(installed, here)
    return text


def _unit(name: str, root: Path) -> dict[str, str]:
    """A unit file's settings (the last value of each key), paths moved into `root`."""
    settings = {}
    for line in _localise((DEPLOY / name).read_text(), root).splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return settings


def _setup(tmp_path: Path, media, emu, db_url: str | None = None) -> tuple[Bench, Path]:
    """/srv/videos in the test's folder: media, the nightly manifest, and the env file."""
    root = tmp_path / "srv"
    root.mkdir()
    bench = make_bench(root, media, emu, clips=1, db_url=db_url)
    (root / "jobs").mkdir()
    (root / MANIFEST).write_text(bench.manifest.read_text().replace('"media/', f'"{root}/media/'))
    bench.manifest = root / MANIFEST
    (root / "env").write_text(
        f"BATCH_RUNNER_DB={bench.db_url}\nBATCH_RUNNER_FAL_URL={emu.url}\nFAL_KEY=deploy-test-key\n"
    )
    return bench, root


def _env_file(root: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (root / "env").read_text().splitlines() if "=" in line)
    return {"PATH": os.environ["PATH"], "HOME": str(root), **dict(pairs)}


def _states(bench: Bench) -> dict[str, int]:
    return dict(bench.sql("select state, count(*) from jobs group by state"))


def _each_input_reached_fal_once(bench: Bench) -> None:
    accepted = [r for r in bench.emulator_log() if r["request_id"]]
    assert len(accepted) == len({r["input_sha256"] for r in accepted}) == JOBS


def test_the_units_pass_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here, so the unit files cannot be verified")
    (tmp_path / "env").write_text("FAL_KEY=x\n")
    names = ["batch-runner-work.service", "batch-runner-nightly.service", "batch-runner-nightly.timer"]
    for name in names:
        (tmp_path / name).write_text(_localise((DEPLOY / name).read_text(), tmp_path))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / n) for n in names)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if "batch-runner" in line] == []  # no warning about ours


def test_the_work_service_runs_what_is_enqueued_and_stops_cleanly(tmp_path, media, emu):
    bench, root = _setup(tmp_path, media, emu)
    unit = _unit("batch-runner-work.service", root)
    env = _env_file(Path(unit["EnvironmentFile"]).parent)
    planner.enqueue(planner.plan(bench.manifest, bench.settings, load_price_table(), bench.repo), bench.repo)
    proc = subprocess.Popen(
        shlex.split(unit["ExecStart"]),
        cwd=unit["WorkingDirectory"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(POLLS):
            if _states(bench) == {"succeeded": JOBS}:
                break
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.02)
        assert proc.poll() is None  # an always-on worker keeps waiting for more
        proc.send_signal(getattr(signal, unit["KillSignal"]))
        _out, err = proc.communicate(timeout=int(unit["TimeoutStopSec"]))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert str(proc.returncode) in unit["SuccessExitStatus"].split(), err
    assert _states(bench) == {"succeeded": JOBS}
    _each_input_reached_fal_once(bench)


def test_the_nightly_timer_starts_a_service_whose_run_finishes_the_manifest(tmp_path, media, emu):
    bench, root = _setup(tmp_path, media, emu)
    timer = _unit("batch-runner-nightly.timer", root)
    assert (DEPLOY / timer["Unit"]).is_file() and timer["OnCalendar"]
    unit = _unit(timer["Unit"], root)
    assert unit["Type"] == "oneshot"  # never two at once
    done = subprocess.run(
        shlex.split(unit["ExecStart"]),
        cwd=unit["WorkingDirectory"],
        env=_env_file(Path(unit["EnvironmentFile"]).parent),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert _states(bench) == {"succeeded": JOBS}
    _each_input_reached_fal_once(bench)


def _cron_command(root: Path) -> str:
    lines = [line for line in (DEPLOY / "crontab").read_text().splitlines() if line and not line.startswith("#")]
    assert len(lines) == 1
    minute, hour, day, month, weekday, command = lines[0].split(None, 5)
    assert (minute, hour, day, month, weekday) == ("0", "1", "*", "*", "*")
    assert "%" not in command  # cron would cut the line there
    return _localise(command, root)


def test_two_overlapping_cron_nights_run_once(tmp_path, media, emulator_factory):
    """The first night is held inside a submit by the emulator; the second starts meanwhile and
    exits at once with the lock message; released, the first finishes every job."""
    emu = emulator_factory(hold_submit_s=60, hold_submit_count=1)
    bench, root = _setup(tmp_path, media, emu)
    command = _cron_command(root)
    env = {"PATH": os.environ["PATH"], "HOME": str(root)}  # cron's bare environment
    first = subprocess.Popen(["/bin/sh", "-c", command], env=env)
    try:
        for _ in range(POLLS):
            if httpx.get(f"{emu.url}/_emulator/holds", timeout=10).json()["submit"]["held_now"]:
                break
            assert first.poll() is None, (root / "nightly.log").read_text()
            time.sleep(0.02)
        second = subprocess.run(["/bin/sh", "-c", command], env=env, timeout=30)
        assert second.returncode == 75
        assert "flock: failed to get lock" in (root / "nightly.log").read_text()
        assert first.poll() is None  # the first night was not disturbed
        httpx.delete(f"{emu.url}/_emulator/holds", timeout=10)
        assert first.wait(timeout=300) == 0, (root / "nightly.log").read_text()
    finally:
        if first.poll() is None:
            first.kill()
    assert _states(bench) == {"succeeded": JOBS}
    _each_input_reached_fal_once(bench)


@pytest.mark.postgres
def test_the_multi_machine_recipe_runs_two_workers_on_one_postgresql(tmp_path, media, emu, pg_empty_url):
    bench, root = _setup(tmp_path, media, emu, db_url=pg_empty_url)
    script = DEPLOY / "multi-machine.sh"
    env = {**_env_file(root), "BATCH_RUNNER_EXE": str(EXE), "CONCURRENCY": "2", "MAX_IN_FLIGHT": "3"}

    def step(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(script), *args], env=env, capture_output=True, text=True, timeout=300)

    # `check` is `health`, tested on its own in test_health.py
    for args in (("migrate",), ("enqueue", str(bench.manifest))):
        done = step(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    machines = [
        subprocess.Popen(
            [str(script), "work", "--until-done", "--run", "nightly-test"], env=env, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for proc in machines:
        assert proc.wait(timeout=300) == 0, proc.communicate()[1]
    assert _states(bench) == {"succeeded": JOBS}
    _each_input_reached_fal_once(bench)
    assert len({w for (w,) in bench.sql("select distinct worker from attempts")}) >= 1


def test_the_multi_machine_recipe_refuses_sqlite(tmp_path):
    env = {"PATH": os.environ["PATH"], "BATCH_RUNNER_DB": f"sqlite:///{tmp_path / 'jobs.db'}"}
    done = subprocess.run([str(DEPLOY / "multi-machine.sh"), "work"], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert "must be a PostgreSQL URL" in done.stderr
