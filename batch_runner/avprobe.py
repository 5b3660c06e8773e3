"""In-process probing through libavformat (PyAV): the figures ffprobe would print (duration, size,
codec, rotation) without starting a process per file (well under 1 ms of CPU for a small clip against
ffprobe's 60-80). Delivered outputs are checked with `probe_video`; planning reads sources with
`ffprobe_info`, which probe.py parses as it parses ffprobe's own JSON and falls back to ffprobe (the
reference: fal bills on source durations) whenever this cannot tell. `tests/integration/test_avprobe.py`
holds the two to the same figures on awkward media.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
from av.stream import Disposition

from .domain import IMAGE_FORMATS, ProbeResult
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


# A still image's container (domain.IMAGE_FORMATS) has no display matrix at the stream level, so no
# frame is decoded (a decoder may read a rotation from EXIF that ffprobe's -show_streams never shows).


def ffprobe_info(path: str) -> dict[str, Any]:
    """The parts of `ffprobe -show_format -show_streams -of json path` that probe.py reads, read in
    process and printed as ffprobe prints them (ffprobe.c show_stream/show_format); the corpus test
    compares them with the installed ffprobe's JSON, field by field.

    Raises ProbeError when libavformat cannot open the file or when a figure is one this path cannot
    reproduce exactly (no decoder to name the codec, an unset frame rate, an undecodable first
    frame): the caller then asks ffprobe itself. Local files only; nothing here times out.
    """
    try:
        # ffprobe sets scan_all_pmts=1 unless told otherwise (ffprobe.c open_input_file)
        with av.open(path, metadata_errors="ignore", container_options={"scan_all_pmts": "1"}) as container:
            fmt_name = container.format.name
            streams = [_stream_info(s) for s in container.streams]
            video = next((s for s in container.streams.video if not s.disposition & Disposition.attached_pic), None)
            if video is not None:
                info = streams[video.index]
                info.update(_video_info(video))
                if fmt_name not in IMAGE_FORMATS and "rotate" not in info["tags"]:
                    info["side_data_list"] = [{"rotation": _frame_rotation(container, video)}]
            size = container.size
            fmt = {"format_name": fmt_name, "size": str(size) if size >= 0 else "N/A"}
            fmt.update(_format_duration(container, streams[video.index] if video is not None else None))
            return {"format": fmt, "streams": streams}
    except av.error.FFmpegError as exc:
        raise ProbeError(f"{path}: libavformat cannot read it ({exc.strerror or type(exc).__name__})") from None
    except OSError as exc:
        raise ProbeError(f"{path}: cannot read: {exc.strerror}") from None


def _format_duration(container: av.container.InputContainer, video: dict[str, Any] | None) -> dict[str, str]:
    """The container's duration, where probe.py would read it (a video stream without a duration
    of its own) and only where it is read, not estimated: matroska's Segment duration. libavformat's
    estimates differ between releases (a VFR mp4: 2.92 s from FFmpeg 5.1, 2.76 s from 8.0), so a
    file that needs one is left to ffprobe."""
    if video is None or _positive(video.get("duration")):
        return {}  # probe.py takes the stream's duration, or refuses the file without a video
    duration = _ffprobe_time(container.duration, Fraction(1, 1_000_000))
    if duration is None:
        return {}
    if container.format.name != "matroska,webm":
        raise ProbeError("the duration would be libavformat's estimate; ffprobe's is the reference")
    return {"duration": duration}


def _positive(printed: str | None) -> bool:
    return printed is not None and float(printed) > 0


def _stream_info(stream: av.stream.Stream) -> dict[str, Any]:
    """One stream's codec_type, disposition, duration, nb_frames and tags, as ffprobe prints them
    (absent where ffprobe prints N/A, which its JSON writer leaves out)."""
    info: dict[str, Any] = {
        "codec_type": stream.type,
        "disposition": {"attached_pic": 1 if stream.disposition & Disposition.attached_pic else 0},
        "tags": dict(stream.metadata),
    }
    duration = _ffprobe_time(stream.duration, stream.time_base)
    if duration is not None:
        info["duration"] = duration
    if stream.frames:
        info["nb_frames"] = str(stream.frames)
    return info


def _video_info(video: av.video.stream.VideoStream) -> dict[str, Any]:
    ctx = video.codec_context
    rate = video.average_rate  # None when ffprobe would print 0/0 or 0/1: which one, PyAV does not say
    if ctx is None or rate is None:
        raise ProbeError(f"stream {video.index}: no decoder or no frame rate in process")
    return {
        # ffprobe prints the codec descriptor's name ("h264"), not the decoder's ("libdav1d")
        "codec_name": ctx.codec.canonical_name,
        "width": ctx.width,
        "height": ctx.height,
        "avg_frame_rate": f"{rate.numerator}/{rate.denominator}",
    }


def _frame_rotation(container: av.container.InputContainer, video: av.video.stream.VideoStream) -> int:
    """The stream's display-matrix rotation as ffprobe prints it (an int, truncated: print_int of
    av_display_rotation_get). PyAV shows the matrix on decoded frames only, so the first frame is
    decoded; a stream whose first frame cannot be decoded is left to ffprobe."""
    video.thread_type = "NONE"  # one frame: no decoder threads to start
    for frame in container.decode(video):
        return int(frame.rotation)
    raise ProbeError(f"stream {video.index}: no frame decoded in process")


def _ffprobe_time(ts: int | None, time_base: Fraction | None) -> str | None:
    """A timestamp as ffprobe prints it (writer_print_time): `ts * av_q2d(time_base)` in double
    precision through "%f"; None where it prints N/A (AV_NOPTS_VALUE, which PyAV gives as None)."""
    if ts is None or time_base is None:
        return None
    return f"{ts * (time_base.numerator / time_base.denominator):f}"


def _seconds(ts: int | None, time_base: Fraction | None) -> Decimal | None:
    """A positive timestamp in seconds exactly as ffprobe prints it (see _ffprobe_time)."""
    printed = _ffprobe_time(ts, time_base)
    return Decimal(printed) if printed is not None and ts is not None and ts > 0 else None


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


__all__ = ["ffprobe_info", "probe_video"]
