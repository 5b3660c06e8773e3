"""Shared fixtures: real clips made with ffmpeg, real SQLite files, a PostgreSQL database per test."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from batch_runner.media import make_clip, make_image

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
REPO = Path(__file__).resolve().parents[1]


def skip_or_fail(reason: str) -> None:
    """Locally a missing service skips; on CI (CI is set) it fails, so nothing is silently skipped."""
    if os.environ.get("CI"):
        pytest.fail(f"required on CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def _no_synced_prices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fal-prices") / "none.json"


@pytest.fixture(autouse=True)
def _hermetic_fal_prices(monkeypatch: pytest.MonkeyPatch, _no_synced_prices: Path) -> None:
    """No test reads a developer's own `prices sync` file (~/.local/share/batch-runner/fal-prices.json)."""
    monkeypatch.setenv("BATCH_RUNNER_FAL_PRICES", str(_no_synced_prices))


@pytest.fixture(autouse=True)
def _hermetic_config(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test reads a developer's own config file ($XDG_CONFIG_HOME/batch-runner/config.toml) or
    the config, key-file and log-format variables of the shell that started pytest."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.getbasetemp() / "no-xdg-config"))
    for name in ("BATCH_RUNNER_CONFIG", "FAL_KEY_FILE", "FAL_ADMIN_KEY_FILE", "BATCH_RUNNER_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny clips of exact durations (50 fps, so every duration is a whole number of frames)."""
    if not shutil.which("ffmpeg") or not shutil.which("ffprobe"):
        skip_or_fail("ffmpeg and ffprobe are not installed")
    d = tmp_path_factory.mktemp("media")
    clips = {
        "c5": {"duration": "5", "audio": True},
        "c5_04": {"duration": "5.04", "audio": False},
        "c0_5": {"duration": "0.5", "audio": False},
        "c30": {"duration": "30", "audio": False},
        "c30_04": {"duration": "30.04", "audio": False},
    }
    out = {name: make_clip(d / f"{name}.mp4", size="64x36", rate=50, **kw) for name, kw in clips.items()}
    out["image"] = make_image(d / "still.png", size="64x36")
    out["text"] = d / "notes.mp4"
    out["text"].write_text("this is not a video\n" * 50)
    out["empty"] = d / "empty.mp4"
    out["empty"].write_bytes(b"")
    data = out["c5"].read_bytes()
    out["truncated"] = d / "truncated.mp4"
    out["truncated"].write_bytes(data[: len(data) // 3])
    return out


@pytest.fixture
def clip_dir(tmp_path: Path, media: dict[str, Path]) -> Path:
    """A folder with two good 5 s clips, as a manifest's `media/` would be."""
    d = tmp_path / "media"
    d.mkdir()
    for name in ("a", "b"):
        shutil.copy(media["c5"], d / f"{name}.mp4")
    return d


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def _pg_admin():
    """An autocommit connection to the server's `postgres` database (skips or fails when it is down)."""
    try:
        import psycopg

        return psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=3)
    except Exception as exc:  # noqa: BLE001
        skip_or_fail(f"PostgreSQL on 127.0.0.1:5432 is not reachable: {exc}")


def _pg_dsn(name: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


@pytest.fixture(scope="session")
def _pg_template() -> Iterator[str]:
    """One database per test run, migrated to head once with the product's own migrations; the
    `pg_url` databases are cloned from it. Its name is unique, so concurrent runs (a CI run, the
    xdist workers of one run) never share it; it is dropped at the end of the session."""
    from batch_runner.db.engine import open_engine

    admin = _pg_admin()
    name = f"br_tmpl_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        open_engine(_pg_dsn(name), auto_migrate=True).dispose()  # CREATE … TEMPLATE needs no open sessions
        yield name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def _pg_database(template: str | None) -> Iterator[str]:
    admin = _pg_admin()
    name = f"br_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    try:
        yield _pg_dsn(name)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def pg_url(_pg_template: str) -> Iterator[str]:
    """A PostgreSQL database for one test, already migrated to head (cloned from the session's
    template, as `batch-runner db upgrade` would have left it), dropped afterwards."""
    with _pg_database(_pg_template) as url:
        yield url


@pytest.fixture
def pg_empty_url() -> Iterator[str]:
    """A fresh, EMPTY PostgreSQL database for one test (no tables: for tests of migrating, of a
    database behind the code, of `db upgrade`), dropped afterwards."""
    with _pg_database(None) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database test runs on both backends. A SQLite file that does not exist yet (the
    test or `make_bench` migrates it), a PostgreSQL database already migrated (from the template)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both backends with no tables at all, for the tests of migrations themselves."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return request.getfixturevalue("pg_empty_url")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------------- the fal emulator

EMU_KEY = "emulator-test-key"


@pytest.fixture
def emulator_factory():
    """Start emulators on free ports (fast time, low frame rate); all stopped after the test."""
    from batch_runner.emulator.server import start_emulator

    servers = []

    def make(**settings):
        settings.setdefault("speed", 1000.0)
        settings.setdefault("fps", 8)
        server = start_emulator(**settings)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def emu(emulator_factory):
    return emulator_factory()


@pytest.fixture
def api(emu):
    """An httpx client for the default emulator, with a key."""
    import httpx

    with httpx.Client(base_url=emu.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=60) as client:
        yield client
