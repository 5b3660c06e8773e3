"""--db must name a batch-runner database: a wrong path is exit 6 and one `Error:` line, never a
new empty ledger (the next `run` would pay for every job again), and a file that is not ours is
left byte for byte as it was. Only the default location and `db upgrade` create a database."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from batch_runner.cli import cli
from batch_runner.db import engine as db_engine

READ_COMMANDS = [("status",), ("status", "--json"), ("report",), ("db", "current")]


@pytest.fixture
def br(tmp_path: Path, monkeypatch):
    """The CLI in-process with no database configured: HOME and XDG_DATA_HOME point into
    tmp_path, so not even the default location can touch the real home."""
    monkeypatch.delenv("BATCH_RUNNER_DB", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))

    def run(*args: str, env: dict | None = None) -> tuple[int, str, str]:
        result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return run


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what a command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "Traceback" not in err
    return lines[0]


def text_file(path: Path) -> Path:
    path.write_text("batch,job\nnightly,1\n")
    return path


def foreign_sqlite(path: Path, *, wal: bool = False) -> Path:
    con = sqlite3.connect(path)
    if wal:
        con.execute("PRAGMA journal_mode=WAL")
    con.execute("create table notes (id integer primary key, body text)")
    con.execute("insert into notes (body) values ('my other app')")
    con.commit()
    con.close()
    return path


# ---------------------------------------------------------------- a path that holds nothing


@pytest.mark.parametrize("form", ["sqlite-url", "bare-path", "env"])
@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_missing_folder_is_exit_6_and_creates_nothing(br, tmp_path, form, command):
    db = tmp_path / "nonexistent" / "dir" / "x.db"
    if form == "env":
        code, out, err = br(*command, env={"BATCH_RUNNER_DB": str(db)})
    else:
        code, out, err = br("--db", f"sqlite:///{db}" if form == "sqlite-url" else str(db), *command)
    assert (code, out) == (6, "")
    line = one_error_line(err)
    assert f"no database at {db}: the folder {db.parent} does not exist" in line
    assert "batch-runner db upgrade" in line and "--db / BATCH_RUNNER_DB" in line
    assert not (tmp_path / "nonexistent").exists()
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_missing_file_in_an_existing_folder_is_exit_6_and_creates_nothing(br, tmp_path, command):
    folder = tmp_path / "state"
    folder.mkdir()
    code, out, err = br("--db", str(folder / "jbos.db"), *command)  # a typo of jobs.db
    assert (code, out) == (6, "")
    line = one_error_line(err)
    assert f"no database at {folder / 'jbos.db'}: the file does not exist" in line
    assert "batch-runner db upgrade" in line
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_empty_file_is_exit_6_and_stays_empty(br, tmp_path, command):
    db = tmp_path / "jobs.db"
    db.write_bytes(b"")
    before = files(tmp_path)
    code, out, err = br("--db", str(db), *command)
    assert (code, out) == (6, "")
    line = one_error_line(err)
    assert f"{db} is an empty file, not a batch-runner database" in line and "batch-runner db upgrade" in line
    assert files(tmp_path) == before


def test_the_reported_reproduction_as_a_subprocess(tmp_path):
    """Issue 10, reproduction 7, with the real console script (inside tmp_path, so a regression
    cannot create folders at the root of this machine)."""
    exe = Path(sys.executable).parent / "batch-runner"
    db = tmp_path / "nonexistent" / "dir" / "x.db"
    env = {"PATH": f"{exe.parent}:/usr/bin:/bin", "HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [str(exe), "--db", f"sqlite:///{db}", "status"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (6, "")
    assert one_error_line(proc.stderr).startswith(f"Error: no database at {db}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---------------------------------------------------------------- a file that is not ours


NOT_OURS = {
    "text file": text_file,
    "sqlite, another app's tables": foreign_sqlite,
    "sqlite in WAL mode, another app's tables": lambda p: foreign_sqlite(p, wal=True),
}
EXPECTED = {
    "text file": "is not a SQLite database; it was left untouched",
    "sqlite, another app's tables": "is a SQLite database but not batch-runner's (1 table(s), not our schema); "
    "it was left untouched",
    "sqlite in WAL mode, another app's tables": "is a SQLite database but not batch-runner's",
}


@pytest.mark.parametrize("kind", list(NOT_OURS))
@pytest.mark.parametrize("command", [*READ_COMMANDS, ("db", "upgrade")], ids=" ".join)
def test_a_file_that_is_not_ours_is_refused_and_left_byte_for_byte(br, tmp_path, kind, command):
    db = tmp_path / "data" / "jobs.db"
    db.parent.mkdir()
    NOT_OURS[kind](db)
    before = files(db.parent)
    code, out, err = br("--db", str(db), *command)
    assert (code, out) == (6, "")
    line = one_error_line(err)
    assert f"Error: {db} {EXPECTED[kind]}" in line and "check --db / BATCH_RUNNER_DB" in line
    assert files(db.parent) == before  # no -wal, -shm or .pre-upgrade.bak beside it either


def test_not_ours_is_refused_even_at_the_default_location(br, tmp_path):
    default = tmp_path / "xdg" / "batch-runner" / "batch-runner.db"
    default.parent.mkdir(parents=True)
    default.write_text("not a database\n")
    before = files(default.parent)
    code, out, err = br("status")
    assert (code, out) == (6, "")
    assert f"Error: {default} is not a SQLite database" in one_error_line(err)
    assert files(default.parent) == before


def test_a_schema_from_a_newer_batch_runner_is_refused_and_untouched(br, tmp_path):
    db = tmp_path / "jobs.db"
    assert br("--db", str(db), "db", "upgrade")[0] == 0
    con = sqlite3.connect(db)
    con.execute("update alembic_version set version_num = '9999'")
    con.commit()
    con.close()
    before = files(tmp_path)
    for command in (("status",), ("db", "current"), ("db", "upgrade")):
        code, out, err = br("--db", str(db), *command)
        assert (code, out) == (6, ""), command
        line = one_error_line(err)
        assert f"{db} is at schema revision '9999', which this batch-runner does not know" in line
        assert "upgrade batch-runner" in line
    assert files(tmp_path) == before


# ---------------------------------------------------------------- creating on purpose


def test_db_upgrade_creates_a_new_database_in_a_new_folder_then_status_works(br, tmp_path):
    db = tmp_path / "new" / "folder" / "jobs.db"
    code, out, err = br("--db", str(db), "db", "upgrade")
    head = db_engine.head_revision()
    assert code == 0 and out == f"sqlite:///{db} is at revision {head}\n"
    assert err == f"created the batch-runner schema in sqlite:///{db}\n"
    assert sqlite3.connect(db).execute("select version_num from alembic_version").fetchone() == (head,)
    code, out, err = br("--db", str(db), "status")
    assert (code, err) == (0, "") and out.startswith("no jobs yet")
    assert br("--db", str(db), "db", "current")[1] == f"current {head}   head {head}\n"
    code, out, err = br("--db", str(db), "db", "upgrade")  # again: nothing to do, nothing claimed
    assert (code, err) == (0, "") and out == f"sqlite:///{db} is at revision {head}\n"


def test_db_upgrade_makes_an_empty_file_a_database(br, tmp_path):
    db = tmp_path / "jobs.db"
    db.write_bytes(b"")
    assert br("--db", str(db), "db", "upgrade")[0] == 0
    assert br("--db", str(db), "status", "--json")[1:] == ('{\n  "batches": []\n}\n', "")


def test_the_default_location_is_created_by_itself_folders_included(br, tmp_path):
    code, out, err = br("status")
    assert (code, err) == (0, "") and out.startswith("no jobs yet")
    db = tmp_path / "xdg" / "batch-runner" / "batch-runner.db"
    assert sqlite3.connect(db).execute("select version_num from alembic_version").fetchone() == (
        db_engine.head_revision(),
    )


def test_db_current_on_the_missing_default_location_creates_nothing(br, tmp_path):
    code, out, err = br("db", "current")
    assert (code, out) == (6, "")
    assert f"no database at {tmp_path / 'xdg' / 'batch-runner' / 'batch-runner.db'}" in one_error_line(err)
    assert not (tmp_path / "xdg").exists()


def test_an_explicit_database_that_is_behind_is_still_migrated_automatically(br, tmp_path):
    db = tmp_path / "old.db"
    engine = db_engine.create(f"sqlite:///{db}")
    db_engine.upgrade(engine, "0001")
    engine.dispose()
    assert br("--db", str(db), "db", "current")[1].startswith("current 0001 ")
    code, out, err = br("--db", str(db), "status")
    assert (code, err) == (0, "") and out.startswith("no jobs yet")
    head = db_engine.head_revision()
    assert br("--db", str(db), "db", "current")[1] == f"current {head}   head {head}\n"


def test_an_unparsable_url_is_exit_6_without_echoing_it(br):
    code, out, err = br("--db", "postgresql://batch:s3cret@db.internal:notaport/jobs", "status")
    assert (code, out) == (6, "")
    line = one_error_line(err)
    assert "database URL (--db / BATCH_RUNNER_DB) is not valid" in line and "s3cret" not in line
