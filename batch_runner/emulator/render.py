"""Real output videos made with ffmpeg, so a user sees what a job would do.

Reframe puts the source on a canvas of the target aspect ratio and fills the new area with a
blurred, stretched copy of the picture; image-to-video zooms and pans over the image;
video-to-video and modify restyle the source; text-to-video renders a pattern with the prompt.
Sizes follow catalog.output_size (short side 540/720/1080 px).
"""

from __future__ import annotations

import tempfile
import textwrap
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import ffmpeg

from .. import catalog

# An ffmpeg-python stream node: the library ships no types.
Stream = Any

FONT = "DejaVu Sans"
PROBE_TIMEOUT_S = 30


class RenderError(Exception):
    """A source could not be read or an output could not be made; the request fails."""

    def __init__(self, message: str, error_type: str = "file_download_error", field: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.field = field


@dataclass(frozen=True)
class MediaInfo:
    width: int
    height: int
    duration: Decimal | None
    has_audio: bool

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def probe_media(path: Path, *, video: bool) -> MediaInfo:
    """Read a downloaded input with ffprobe (through ffmpeg-python)."""
    try:
        info = ffmpeg.probe(str(path), timeout=PROBE_TIMEOUT_S)
    except ffmpeg.Error as exc:
        tail = (exc.stderr or b"").decode("utf-8", "replace").strip().splitlines()[-1:] or ["unreadable"]
        raise RenderError(f"could not read the input file: {tail[0]}") from exc
    except Exception as exc:  # a hung or missing ffprobe fails this request only
        raise RenderError(f"could not probe the input file: {exc}") from exc
    streams = info.get("streams") or []
    v = next((s for s in streams if s.get("codec_type") == "video"), None)
    if v is None:
        raise RenderError("the input file has no picture")
    duration = None
    if video:
        raw = v.get("duration") or (info.get("format") or {}).get("duration")
        if raw in (None, "N/A"):
            raise RenderError("the input video has no duration")
        duration = Decimal(str(raw))
    width, height = int(v["width"]), int(v["height"])
    rotate = int(float((v.get("tags") or {}).get("rotate", 0) or 0))
    for side in v.get("side_data_list") or ():
        rotate = int(float(side.get("rotation", rotate)))
    if rotate % 180:
        width, height = height, width
    return MediaInfo(width, height, duration, any(s.get("codec_type") == "audio" for s in streams))


def render(
    ep: catalog.Endpoint,
    params: dict[str, Any],
    inputs: dict[str, Path],
    spec: catalog.OutputSpec,
    out: Path,
    *,
    fps: int,
) -> None:
    """Make the output video of one request at `out`."""
    family = ep.family
    if family == "reframe":
        stream, audio = _reframe(inputs["video_url"], params, spec, fps)
    elif family == "image-to-video" and "image_url" in inputs:
        stream, audio = _zoom_pan(inputs["image_url"], spec, fps), None
    elif family in ("video-to-video", "modify"):
        strength = str(params.get("edit_strength") or params.get("mode") or "flex_1")
        stream, audio = _restyle(inputs["video_url"], spec, fps, strength)
    else:
        stream, audio = _pattern(str(params.get("prompt", "")), spec, fps), None
    streams = [stream] + ([audio] if audio is not None else [])
    kw: dict[str, Any] = {
        "vcodec": "libx264",
        "preset": "ultrafast",
        "crf": 30,
        "pix_fmt": "yuv420p",
        "r": fps,
        "t": str(spec.duration),
        "movflags": "+faststart",
    }
    if audio is not None:
        kw["acodec"] = "aac"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        ffmpeg.output(*streams, str(out), **kw).overwrite_output().run(quiet=True)
    except ffmpeg.Error as exc:
        tail = (exc.stderr or b"").decode("utf-8", "replace").strip().splitlines()[-1:] or ["?"]
        raise RenderError(f"rendering failed: {tail[0]}", "internal_server_error") from exc


def _placement(params: dict[str, Any], frame_w: int, frame_h: int, src: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where the source sits on the canvas: x, y, width, height (all even)."""
    sp = params.get("source_position")
    if sp:
        x, y = sp["x_norm"] * frame_w, sp["y_norm"] * frame_h
        w, h = sp["w_norm"] * frame_w, sp["h_norm"] * frame_h
    elif all(params.get(k) is not None for k in ("x_start", "x_end", "y_start", "y_end")):
        x, y = params["x_start"], params["y_start"]
        w, h = params["x_end"] - params["x_start"], params["y_end"] - params["y_start"]
    else:
        scale = min(frame_w / src[0], frame_h / src[1])
        w, h = src[0] * scale, src[1] * scale
        # grid_position_x/y: the source's place in the free space, 0 (left/top) to 100 (right/bottom).
        gx = params.get("grid_position_x")
        gy = params.get("grid_position_y")
        x = (frame_w - w) * (50 if gx is None else max(0, min(100, gx))) / 100
        y = (frame_h - h) * (50 if gy is None else max(0, min(100, gy))) / 100
    w, h = max(2, min(int(w) // 2 * 2, frame_w)), max(2, min(int(h) // 2 * 2, frame_h))
    x, y = max(0, min(int(x), frame_w - w)), max(0, min(int(y), frame_h - h))
    return x, y, w, h


def _reframe(src: Path, params: dict[str, Any], spec: catalog.OutputSpec, fps: int) -> tuple[Stream, Stream | None]:
    info = probe_media(src, video=True)
    frame_w, frame_h = spec.width, spec.height
    x, y, w, h = _placement(params, frame_w, frame_h, info.size)
    inp = ffmpeg.input(str(src))
    parts = inp.video.filter("fps", fps).split()
    bg = (
        parts[0]
        .filter("scale", frame_w, frame_h)
        .filter("boxblur", luma_radius=max(4, min(frame_w, frame_h) // 24), luma_power=2)
        .filter("eq", brightness=-0.06, saturation=0.8)
    )
    fg = parts[1].filter("scale", w, h)
    video = ffmpeg.overlay(bg, fg, x=x, y=y).filter("setsar", 1)
    return video, inp.audio if info.has_audio else None


def _zoom_pan(image: Path, spec: catalog.OutputSpec, fps: int) -> Stream:
    frame_w, frame_h = spec.width, spec.height
    frames = int(spec.duration * fps)
    inp = ffmpeg.input(str(image), loop=1, framerate=fps, t=str(spec.duration))
    cover = (
        inp.video.filter("scale", frame_w, frame_h, force_original_aspect_ratio="increase")
        .filter("crop", frame_w, frame_h)
        .filter("setsar", 1)
    )
    return cover.filter(
        "zoompan",
        z=f"1+0.25*on/{max(frames, 1)}",
        d=1,
        s=f"{frame_w}x{frame_h}",
        fps=fps,
        x="(iw-iw/zoom)*on/" + str(max(frames, 1)),
        y="(ih-ih/zoom)/2",
    )


_STRENGTH = {"adhere": 0.5, "flex": 1.0, "reimagine": 1.6}


def _restyle(src: Path, spec: catalog.OutputSpec, fps: int, strength: str) -> tuple[Stream, Stream | None]:
    info = probe_media(src, video=True)
    k = _STRENGTH.get(strength.split("_")[0], 1.0) * (
        1 + (int(strength[-1]) - 1) * 0.25 if strength[-1].isdigit() else 1
    )
    inp = ffmpeg.input(str(src), stream_loop=-1)
    video = (
        inp.video.filter("fps", fps)
        .filter("scale", spec.width, spec.height, force_original_aspect_ratio="increase")
        .filter("crop", spec.width, spec.height)
        .filter("setsar", 1)
        .filter("hue", H=f"{0.6 * k}*PI*t", s=1 + 0.5 * k)
        .filter("eq", contrast=1 + 0.2 * k, saturation=1 + 0.3 * k)
        .filter("lutrgb", r="round(val/48)*48", g="round(val/48)*48", b="round(val/48)*48")
    )
    return video, inp.audio if info.has_audio else None


def _pattern(prompt: str, spec: catalog.OutputSpec, fps: int) -> Stream:
    frame_w, frame_h = spec.width, spec.height
    base = ffmpeg.input(f"mandelbrot=size={frame_w}x{frame_h}:rate={fps}", f="lavfi", t=str(spec.duration))
    text = "\n".join(textwrap.wrap(prompt, width=max(16, frame_w // 28))[:8]) or "(no prompt)"
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as fh:
        fh.write(text)
    return base.video.filter(
        "drawtext",
        textfile=fh.name,
        font=FONT,
        fontsize=max(14, frame_h // 22),
        fontcolor="white",
        box=1,
        boxcolor="black@0.5",
        boxborderw=12,
        x="(w-text_w)/2",
        y="(h-text_h)/2",
    )
