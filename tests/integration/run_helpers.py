"""Run the real use case in-process against a real emulator, with fast retry timings."""

from __future__ import annotations

import re
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from batch_runner import runner
from batch_runner.api.transport import RetryPolicy
from batch_runner.config import Secret, Settings
from batch_runner.db import engine as db_engine
from batch_runner.db.repo import Repository
from batch_runner.media import make_clip
from batch_runner.pool import PoolSettings
from batch_runner.pricing import load_price_table

FAST = RetryPolicy(attempts=4, base_s=0.01, cap_s=0.05, max_retry_after_s=0.05)

REFRAME_MANIFEST = """batch: {batch}
endpoint: ray-3.2/reframe
defaults:
  prompt: extend the scene
  resolution: 540p
matrix:
  aspect_ratio: ["9:16", "1:1"]
sources:
  - glob: "media/*.mp4"
output_root: out
output: "{{batch}}/{{stem}}_{{aspect_ratio}}.mp4"
"""


@dataclass
class Bench:
    """A folder with media and a manifest, a job table (SQLite or PostgreSQL), and an emulator."""

    root: Path
    emulator: Any
    manifest: Path
    db_url: str
    events: list = field(default_factory=list)
    extra_settings: dict = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return Settings(db_url=self.db_url, fal_url=self.emulator.url, **self.extra_settings)

    @property
    def repo(self) -> Repository:
        return Repository(db_engine.open_engine(self.db_url))

    def pool(self, **kw: Any) -> PoolSettings:
        base = {
            "concurrency": 2,
            "retry_delay_s": 0.05,
            "follow_later_s": 0.05,
            "outage_pause_s": 0.05,
            "poll_min_s": 0.05,
            "poll_max_s": 0.2,
            "idle_s": 0.05,
            "retry_policy": FAST,
            "lease_s": 30.0,
        }
        base.update(kw)
        return PoolSettings(**base)

    def run(
        self,
        *,
        manifest: bool = True,
        max_cost: int | None = None,
        stop: threading.Event | None = None,
        batches: list[str] | None = None,
        reporter: Any = None,
        **pool_kw: Any,
    ) -> runner.RunSummary:
        """One run in-process with the fast test timings; events go to `self.events` unless
        another reporter (a display, metrics, notifications) is given."""
        return runner.run_jobs(
            self.settings,
            load_price_table(),
            self.repo,
            Secret("test-key"),
            manifest=self.manifest if manifest else None,
            batches=batches,
            pool=self.pool(**pool_kw),
            max_cost_micro_usd=max_cost,
            run_name=None,
            reporter=reporter or _Recorder(self.events),
            stop=stop or threading.Event(),
        )

    def emulator_log(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.emulator.url}/_emulator/requests", timeout=30).json()["requests"]

    @cached_property
    def engine(self) -> Engine:
        """A plain engine for looking at the tables from outside (no pool: nothing stays open)."""
        return create_engine(self.db_url, poolclass=NullPool)

    def sql(self, query: str, *args: Any) -> list[tuple]:
        """Run SQL with `?` placeholders on either backend; rows come back as plain tuples."""
        names = iter(range(len(args)))
        bound = re.sub(r"\?", lambda _: f":p{next(names)}", query)
        with self.engine.begin() as conn:
            result = conn.execute(text(bound), {f"p{i}": a for i, a in enumerate(args)})
            return [tuple(r) for r in result] if result.returns_rows else []


class _Recorder:
    def __init__(self, events: list) -> None:
        self.events = events
        self.lock = threading.Lock()

    def event(self, kind: str, job: dict[str, Any], **info: Any) -> None:
        with self.lock:
            self.events.append((kind, job.id if job else None, info))


DURATIONS = {"c5": "5", "c0_5": "0.5", "c5_04": "5.04"}
PATTERNS = ("testsrc2", "smptebars", "rgbtestsrc", "testsrc", "pal100bars", "smptehdbars", "yuvtestsrc")


def _clip(media: dict[str, Path], clip: str, pattern: str) -> Path:
    """One clip per (length, picture), made with ffmpeg once per test session next to the session's
    `media` and copied into each bench (a test may change or delete its copy). ffmpeg writes the
    same bytes for the same arguments, so every bench gets what it would have made itself."""
    cache = media["c5"].parent / "bench-clips"
    path = cache / f"{clip}-{pattern}.mp4"
    if not path.exists():
        part = make_clip(
            cache / f".{clip}-{pattern}.{uuid.uuid4().hex}.mp4",
            duration=DURATIONS[clip],
            size="64x36",
            rate=50,
            pattern=pattern,
            audio=False,
        )
        part.replace(path)
    return path


def make_bench(
    tmp_path: Path,
    media: dict[str, Path],
    emulator: Any,
    *,
    clips: int = 2,
    clip: str = "c5",
    manifest_text: str = REFRAME_MANIFEST,
    batch: str = "b",
    db_url: str | None = None,
) -> Bench:
    """Distinct clips (different pictures, same length), so every job's input differs. The job
    table is a SQLite file unless `db_url` names another database; either is created and migrated
    here, as `batch-runner db upgrade` would (the CLI never creates an explicit --db by itself)."""
    (tmp_path / "media").mkdir(exist_ok=True)
    for i in range(clips):
        shutil.copyfile(_clip(media, clip, PATTERNS[i % len(PATTERNS)]), tmp_path / "media" / f"clip{i}.mp4")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(manifest_text.format(batch=batch))
    url = db_url or f"sqlite:///{tmp_path / 'jobs.db'}"
    db_engine.open_engine(url, auto_migrate=True).dispose()
    return Bench(tmp_path, emulator, manifest, url)
