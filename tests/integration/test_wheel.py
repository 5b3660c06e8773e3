"""The built wheel ships the migrations and the price table, and `db upgrade` works from it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO


def test_wheel_ships_migrations_and_db_upgrade_works_from_it(tmp_path: Path):
    out = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = out.glob("batch_runner-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert {
            "batch_runner/_migrations/env.py",
            "batch_runner/_migrations/versions/0001_initial.py",
            "batch_runner/data/prices.yaml",
            "batch_runner/templates/report.html.j2",  # the HTML report
        } <= names
        site = tmp_path / "site"
        zf.extractall(site)
    db = tmp_path / "from-wheel.db"
    proc = subprocess.run(
        [sys.executable, "-m", "batch_runner", "--db", str(db), "db", "upgrade"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    from batch_runner.db.engine import head_revision

    assert sqlite3.connect(db).execute("select version_num from alembic_version").fetchone() == (head_revision(),)
    check = subprocess.run(
        [sys.executable, "-c", "import batch_runner.db.engine as e; print(e.migrations_dir())"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site)},
        timeout=60,
    )
    assert check.stdout.strip() == str(site / "batch_runner" / "_migrations")
