"""The CLI's start-up: a command imports only its own module, so `plan` starts without the run
machinery (fal client, worker pool, httpx), fsspec when no URL is an object store's, PyAV when
it has nothing to probe, or Alembic when the database is current."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

from batch_runner.cli import cli
from batch_runner.cli.app import COMMAND_MODULES
from tests.conftest import REPO, write


def test_the_lazy_group_names_the_module_of_every_command():
    defined_in = {name: cmd.callback.__module__.rsplit(".", 1)[-1] for name, cmd in cli.commands.items()}
    assert defined_in == COMMAND_MODULES


_RUN_PLAN = """
import gc, json, os, sys
from batch_runner.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
with open(os.environ["SEEN"], "w") as fh:
    json.dump({"code": code, "modules": sorted(sys.modules), "frozen": gc.get_freeze_count()}, fh)
"""


def test_plan_starts_without_the_run_machinery_or_migrations(tmp_path: Path):
    manifest = write(
        tmp_path / "m.yaml",
        "batch: b\nendpoint: ray-3.2/text-to-video\nsources:\n  - params: {prompt: hello}\n",
    )
    seen = tmp_path / "modules.json"
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "PYTHONPATH": str(REPO), "SEEN": str(seen)}
    for run in ("creates the database", "finds it current"):
        proc = subprocess.run(
            [sys.executable, "-c", _RUN_PLAN, "plan", str(manifest), "--json"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        result = json.loads(seen.read_text())
        assert result["code"] == 0
        loaded = set(result["modules"])
        assert "batch_runner.planner" in loaded
        heavy = ["httpx", "av", "fsspec", "batch_runner.runner", "batch_runner.pool", "batch_runner.api.client"]
        for name in heavy + (["alembic"] if run == "finds it current" else []):
            assert name not in loaded, f"plan imported {name} when it {run}"
        assert result["frozen"] > 0  # its own process: what the imports made is out of the collector's sight


def test_a_command_run_in_a_callers_process_freezes_nothing_of_the_callers(tmp_path: Path):
    from click.testing import CliRunner

    before = gc.get_freeze_count()
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "j.db"), "endpoints"])
    assert result.exit_code == 0, result.output
    assert gc.get_freeze_count() == before


def test_a_current_postgresql_database_is_opened_without_alembic(tmp_path: Path, pg_url: str):
    """Every worker process checks the schema at start-up: on a current PostgreSQL database one
    plain read of alembic_version does it (Alembic and its scripts cost about 0.3 s of CPU per
    process, a tenth of four workers' start-up on two cores)."""
    seen = tmp_path / "modules.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEEN": str(seen), "BATCH_RUNNER_DB": pg_url}
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_PLAN, "status"], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(seen.read_text())
    assert result["code"] == 0 and "batch_runner.db.engine" in result["modules"]
    assert "alembic" not in result["modules"]
