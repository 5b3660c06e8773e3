"""A load batch and an emulator process, shared by the run and scale-out benchmarks and by the
scale-out tests: many small Ray 2 Flash reframe jobs over distinct 1 s sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from batch_runner.media import PATTERNS, make_clip

EXE = Path(sys.executable).parent / "batch-runner"
ASPECTS = ["9:16", "1:1", "4:3", "3:4", "16:9"]


def write_load_batch(
    folder: Path, sources: int, grid_x: list[int], *, batch: str = "bench", output_root: str = "out"
) -> Path:
    """`sources` distinct clips in folder/media and a manifest (folder/BATCH.yaml) crossing them
    with every aspect ratio and `grid_x` position: sources × 5 × len(grid_x) jobs."""
    (folder / "media").mkdir(parents=True, exist_ok=True)
    for i in range(sources):
        # distinct content even where the pattern repeats: a different width per source
        make_clip(
            folder / "media" / f"src{i:03d}.mp4",
            duration="1",
            size=f"{64 + 2 * i}x36",
            rate=25,
            audio=False,
            pattern=PATTERNS[i % len(PATTERNS)],
        )
    manifest = folder / f"{batch}.yaml"
    manifest.write_text(
        f"batch: {batch}\nendpoint: ray-2-flash/reframe\n"
        f"matrix:\n  aspect_ratio: {json.dumps(ASPECTS)}\n  grid_position_x: {json.dumps(grid_x)}\n"
        f'sources:\n  - glob: "media/*.mp4"\noutput_root: {output_root}\n'
        'output: "{batch}/{stem}_{aspect_ratio}_{grid_position_x}.mp4"\n'
    )
    return manifest


class EmulatorProcess:
    """A fresh `batch-runner emulator serve` process on a free port, with the given options."""

    def __init__(self, *options: str) -> None:
        self.options = options

    def __enter__(self) -> EmulatorProcess:
        self.proc = subprocess.Popen(
            [str(EXE), "emulator", "serve", "--port", "0", "--fps", "8", *self.options],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None  # stdout=PIPE
        self.url = self.proc.stdout.readline().strip()
        return self

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.url}/_emulator/health", timeout=30).json()
        return body

    def requests(self) -> list[dict[str, Any]]:
        """Every submission the emulator received, as its inspection lists it (received_at, and for
        accepted ones started_at and completed_at: batch_runner/emulator/queue.py `inspection`)."""
        rows: list[dict[str, Any]] = httpx.get(f"{self.url}/_emulator/requests", timeout=60).json()["requests"]
        return rows

    def cpu_seconds(self) -> float:
        """The emulator's CPU so far, its own and its finished children's (ffmpeg renders, ffprobe)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
        return ticks / os.sysconf("SC_CLK_TCK")

    def accepted_per_input(self, rows: list[dict[str, Any]] | None = None) -> Counter[str]:
        """Requests fal accepted, per input payload hash (from `rows` if already read)."""
        rows = self.requests() if rows is None else rows
        return Counter(r["input_sha256"] for r in rows if r["request_id"])

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
