"""Make media with ffmpeg (through ffmpeg-python): sample clips and images for demos and tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import ffmpeg

from .errors import BatchRunnerError, ToolMissingError

PATTERNS = ("testsrc2", "smptebars", "rgbtestsrc", "testsrc", "pal100bars")
HUE_STEP_DEG = 37  # coprime with 360: each round of the patterns gets its own hue for 360 rounds


def require_ffmpeg() -> None:
    if not shutil.which("ffmpeg"):
        raise ToolMissingError(
            "ffmpeg is not installed or not on PATH",
            hint="install it: `sudo apt-get install ffmpeg` or `brew install ffmpeg`",
        )


def make_clip(
    path: Path,
    *,
    duration: str = "5",
    size: str = "320x180",
    rate: int = 25,
    pattern: str = "testsrc2",
    audio: bool = True,
    hue_deg: int = 0,
) -> Path:
    """Write an H.264 test clip of exactly `duration` seconds (a decimal string), its colours
    turned by `hue_deg` (so one pattern gives many different clips)."""
    require_ffmpeg()
    path.parent.mkdir(parents=True, exist_ok=True)
    video = _hued(ffmpeg.input(f"{pattern}=size={size}:rate={rate}", f="lavfi", t=duration), hue_deg)
    streams = [video]
    if audio:
        streams.append(ffmpeg.input("sine=frequency=440:sample_rate=22050", f="lavfi", t=duration))
    out = ffmpeg.output(
        *streams,
        str(path),
        vcodec="libx264",
        preset="ultrafast",
        pix_fmt="yuv420p",
        t=duration,
        **({"acodec": "aac", "shortest": None} if audio else {}),
    )
    _run(out.overwrite_output(), path)
    return path


def make_image(path: Path, *, size: str = "640x360", pattern: str = "testsrc2", hue_deg: int = 0) -> Path:
    """Write one still frame (PNG or JPEG by the file's suffix)."""
    require_ffmpeg()
    path.parent.mkdir(parents=True, exist_ok=True)
    out = _hued(ffmpeg.input(f"{pattern}=size={size}:rate=1", f="lavfi"), hue_deg).output(str(path), vframes=1)
    _run(out.overwrite_output(), path)
    return path


def _hued(stream: ffmpeg.nodes.FilterableStream, hue_deg: int) -> ffmpeg.nodes.FilterableStream:
    return stream.filter("hue", h=hue_deg % 360) if hue_deg % 360 else stream


def _run(stream: ffmpeg.nodes.OutputStream, path: Path) -> None:
    try:
        stream.run(quiet=True)
    except ffmpeg.Error as exc:
        tail = (exc.stderr or b"").decode("utf-8", "replace").strip().splitlines()[-1:] or ["?"]
        raise BatchRunnerError(f"ffmpeg could not write {path}: {tail[0]}") from exc


def make_samples(folder: Path, *, clips: int = 3, images: int = 3, duration: str = "5") -> list[Path]:
    """Varied 16:9 clips (with audio) and still images to try manifests on, every one different:
    the test patterns take turns, and each round of them is turned to another hue."""
    made = []
    for i in range(clips):
        pattern, hue = _look(i)
        made.append(make_clip(folder / f"clip{i + 1:02d}.mp4", duration=duration, pattern=pattern, hue_deg=hue))
    for i in range(images):
        pattern, hue = _look(i + 2)
        made.append(make_image(folder / f"still{i + 1:02d}.png", pattern=pattern, hue_deg=hue))
    return made


def _look(i: int) -> tuple[str, int]:
    """The i-th sample's pattern and hue: distinct for the first 5 × 360 samples."""
    return PATTERNS[i % len(PATTERNS)], (i // len(PATTERNS)) * HUE_STEP_DEG


def thumbnail(path: Path, *, width: int = 192, at_s: float = 1.0) -> bytes | None:
    """A JPEG frame of a video or image, `width` px wide; None when it cannot be read."""
    if not shutil.which("ffmpeg") or not path.exists():
        return None
    for seek in (at_s, 0.0):  # short clips have no frame at 1 s
        try:
            out, _ = (
                ffmpeg.input(str(path), ss=seek)
                .output("pipe:", vframes=1, format="image2", vcodec="mjpeg", vf=f"scale={width}:-2")
                .run(capture_stdout=True, capture_stderr=True, quiet=True)
            )
        except ffmpeg.Error:
            continue
        if out:
            return bytes(out)  # ffmpeg-python is untyped: its stdout is bytes
    return None
