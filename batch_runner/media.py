"""Make media with ffmpeg (through ffmpeg-python): sample clips and images for demos and tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import ffmpeg

from .errors import BatchRunnerError, ToolMissingError

PATTERNS = ("testsrc2", "smptebars", "rgbtestsrc", "testsrc", "pal100bars")


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
) -> Path:
    """Write an H.264 test clip of exactly `duration` seconds (a decimal string)."""
    require_ffmpeg()
    path.parent.mkdir(parents=True, exist_ok=True)
    video = ffmpeg.input(f"{pattern}=size={size}:rate={rate}", f="lavfi", t=duration)
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


def make_image(path: Path, *, size: str = "640x360", pattern: str = "testsrc2") -> Path:
    """Write one still frame (PNG or JPEG by the file's suffix)."""
    require_ffmpeg()
    path.parent.mkdir(parents=True, exist_ok=True)
    out = ffmpeg.input(f"{pattern}=size={size}:rate=1", f="lavfi").output(str(path), vframes=1)
    _run(out.overwrite_output(), path)
    return path


def _run(stream: ffmpeg.nodes.OutputStream, path: Path) -> None:
    try:
        stream.run(quiet=True)
    except ffmpeg.Error as exc:
        tail = (exc.stderr or b"").decode("utf-8", "replace").strip().splitlines()[-1:] or ["?"]
        raise BatchRunnerError(f"ffmpeg could not write {path}: {tail[0]}") from exc


def make_samples(folder: Path, *, clips: int = 3, images: int = 3, duration: str = "5") -> list[Path]:
    """A few varied 16:9 clips (with audio) and still images to try manifests on."""
    made = []
    for i in range(clips):
        made.append(make_clip(folder / f"clip{i + 1:02d}.mp4", duration=duration, pattern=PATTERNS[i % len(PATTERNS)]))
    for i in range(images):
        made.append(make_image(folder / f"still{i + 1:02d}.png", pattern=PATTERNS[(i + 2) % len(PATTERNS)]))
    return made


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
