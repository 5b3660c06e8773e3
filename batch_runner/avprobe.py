"""In-process probing of delivered outputs through libavformat (PyAV): the figures ffprobe would
print (duration, size, codec, rotation), without starting a process per file (about 4 ms of CPU
against ffprobe's 80). ffprobe stays the reference for source durations, which fal bills on
(`probe.py`); `tests/integration/test_avprobe.py` holds the two to the same figures on awkward media.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import av
import av.error
from av.stream import Disposition

from .domain import ProbeResult
from .errors import ProbeError


def probe_video(path: Path, fingerprint: str) -> ProbeResult:
    """The video at `path`, as `probe.probe(path, "video", …)` would describe it (ProbeError if unreadable)."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            # a cover image stored as a video stream is not the video (probe.py skips it too)
            video = next((s for s in container.streams.video if not s.disposition & Disposition.attached_pic), None)
            if video is None:
                raise ProbeError(f"{path}: no video stream; not a video file")
            duration = _seconds(video.duration, video.time_base) or _seconds(container.duration, Fraction(1, 1_000_000))
            if duration is None or duration <= 0:
                raise ProbeError(f"{path}: no duration; truncated or corrupt video")
            ctx = video.codec_context
            rate = video.average_rate
            return ProbeResult(
                source=str(path),
                fingerprint=fingerprint,
                kind="video",
                duration=duration,
                width=int(ctx.width or 0),
                height=int(ctx.height or 0),
                fps=f"{rate.numerator}/{rate.denominator}" if rate else "0/0",
                codec=ctx.name or "",
                rotation=_rotation(container, video),
                has_audio=bool(container.streams.audio),
                size_bytes=path.stat().st_size,
            )
    except av.error.FFmpegError as exc:
        raise ProbeError(f"{path}: truncated or corrupt file ({exc.strerror or type(exc).__name__})") from None
    except OSError as exc:
        raise ProbeError(f"{path}: cannot read: {exc.strerror}") from None


def _seconds(ts: int | None, time_base: Fraction | None) -> Decimal | None:
    """A timestamp in seconds exactly as ffprobe prints it: `ts * av_q2d(time_base)` in double
    precision, then printf's "%f" (ffprobe's writer_print_time)."""
    if ts is None or time_base is None or ts <= 0:
        return None
    return Decimal(f"{ts * (time_base.numerator / time_base.denominator):.6f}")


def _rotation(container: av.container.InputContainer, video: av.video.stream.VideoStream) -> int:
    """The display matrix's rotation in degrees (0-359), as ffprobe's side data reports it. PyAV
    exposes the matrix on decoded frames only, so the first frame is decoded (a few ms)."""
    rotate = video.metadata.get("rotate")  # written as a tag by older muxers
    if rotate is not None:
        try:
            return int(float(rotate)) % 360
        except ValueError:
            return 0
    video.thread_type = "NONE"  # one frame: no decoder threads to start
    for frame in container.decode(video):
        return round(frame.rotation) % 360
    return 0


__all__ = ["probe_video"]
