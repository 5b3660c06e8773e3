"""Source probing: fingerprints, and ffprobe's view of local files and http(s) URLs, in parallel.

`probe` runs ffprobe, the reference, as a subprocess that is killed when it overruns its timeout.
(ffmpeg-python's `ffmpeg.probe` passes `timeout` to `communicate()` but never kills the child, so a
hung ffprobe would outlive us; we build the same command and own the process instead.)
`probe_sources` reads local files in process first (avprobe.ffprobe_info, parsed by the same
`_parse`) and asks ffprobe only for what that path cannot tell: unreadable or refused files (so the
error messages are ffprobe's) and URLs (ffprobe's -rw_timeout and a process we can kill).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import storage
from .domain import IMAGE_FORMATS, ProbeResult, is_remote
from .errors import BatchRunnerError, ProbeError, ToolMissingError

if TYPE_CHECKING:  # httpx and PyAV (avprobe) are imported where used: a warm plan needs neither
    import httpx

FFPROBE = "ffprobe"
URL_TIMEOUT_S = 10.0
_T = TypeVar("_T")


def require_ffprobe(cmd: str = FFPROBE) -> str:
    """The ffprobe executable's path, or a ToolMissingError that says how to install it."""
    found = shutil.which(cmd)
    if not found:
        raise ToolMissingError(
            "ffprobe is not installed or not on PATH",
            hint="install ffmpeg: `sudo apt-get install ffmpeg` or `brew install ffmpeg`",
        )
    return found


# --------------------------------------------------------------------------- fingerprints


def fingerprint(source: str, client: httpx.Client | None = None) -> str:
    """A string that changes whenever the source's content may have changed.

    Local files: absolute path + size + mtime. URLs: URL + ETag and Content-Length from a
    HEAD request; when the server sends neither, the URL alone (and the cache is skipped).
    """
    if is_remote(source, data_uri=False):
        return _url_fingerprint(source, client)
    if storage.is_store(source):  # object stores: URL + ETag + size (storage.py)
        return storage.fingerprint(source)
    path = Path(source)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ProbeError(f"{source}: file not found", hint="check the path or glob in the manifest") from None
    except OSError as exc:
        raise ProbeError(f"{source}: cannot read: {exc.strerror}", hint="check the file's permissions") from exc
    if path.is_dir():
        raise ProbeError(f"{source}: is a folder, not a file", hint="use a glob such as folder/*.mp4")
    if not path.is_file():
        raise ProbeError(f"{source}: not a regular file", hint="give a regular media file")
    if not os.access(path, os.R_OK):
        raise ProbeError(f"{source}: cannot read: permission denied", hint="check the file's permissions")
    if st.st_size == 0:
        raise ProbeError(f"{source}: file is empty (0 bytes)", hint="re-export or re-download the source")
    return f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _url_fingerprint(url: str, client: httpx.Client | None) -> str:
    import httpx

    own = client is None
    client = client or httpx.Client(timeout=URL_TIMEOUT_S, follow_redirects=True)
    try:
        resp = client.head(url)
    except httpx.HTTPError as exc:
        raise ProbeError(
            f"{url}: unreachable: {type(exc).__name__}: {exc}", hint="check the URL and your network"
        ) from exc
    finally:
        if own:
            client.close()
    if resp.status_code >= 400:
        raise ProbeError(f"{url}: unreachable: HTTP {resp.status_code}", hint="check the URL")
    etag = resp.headers.get("etag")
    length = resp.headers.get("content-length")
    if length == "0":
        raise ProbeError(f"{url}: file is empty (0 bytes)")
    if not etag and not length:
        return f"url:{url}"
    return f"url:{url}:{etag or ''}:{length or ''}"


def cacheable(fp: str) -> bool:
    """A fingerprint that identifies content (URLs without ETag or length do not)."""
    return not (fp.startswith("url:") and fp.count(":") <= 2)


# --------------------------------------------------------------------------- probing


def probe(source: str, kind: str, fp: str, *, timeout_s: float, cmd: str = FFPROBE) -> ProbeResult:
    """Run ffprobe on one source and check it is the kind expected ("video" or "image")."""
    if storage.is_store(source):  # through a short-lived presigned URL, or a local copy (storage.readable)
        with storage.readable(source, storage.PROBE_URL_LIFETIME_S) as target:
            return _ffprobe(source, target, kind, fp, timeout_s=timeout_s, cmd=cmd)
    return _ffprobe(source, source, kind, fp, timeout_s=timeout_s, cmd=cmd)


def _ffprobe(source: str, target: str, kind: str, fp: str, *, timeout_s: float, cmd: str) -> ProbeResult:
    args = [cmd, "-v", "error", "-show_format", "-show_streams", "-of", "json"]
    if is_remote(target, data_uri=False):
        args += ["-rw_timeout", str(int(URL_TIMEOUT_S * 1_000_000))]
    args.append(target)
    try:
        proc = subprocess.run(args, capture_output=True, timeout=timeout_s, check=False)
    except FileNotFoundError:
        raise ToolMissingError(
            "ffprobe is not installed or not on PATH", hint="install ffmpeg: `sudo apt-get install ffmpeg`"
        ) from None
    except subprocess.TimeoutExpired:
        raise ProbeError(
            f"{source}: ffprobe timed out after {timeout_s:g} s and was killed",
            hint="raise BATCH_RUNNER_PROBE_TIMEOUT_S or check the source",
        ) from None
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace").replace(target, source)  # never a signed URL in a message
        raise ProbeError(f"{source}: {_explain(stderr, kind, _has_media_magic(source))}")
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise ProbeError(f"{source}: ffprobe printed unreadable output") from exc
    return _parse(source, kind, fp, info)


def probe_source(source: str, kind: str, fp: str, *, timeout_s: float, cmd: str = FFPROBE) -> ProbeResult:
    """What `probe` returns for this source, read in process when it can be: a local file that
    libavformat opens and that passes `_parse`'s checks. Everything else (URLs, files it refuses
    or that `_parse` refuses, figures it cannot reproduce) goes to ffprobe, whose answer or error
    message stands. The in-process read has no timeout: fingerprint() admits regular files only."""
    if not is_remote(source, data_uri=False) and not storage.is_store(source):
        from . import avprobe

        try:
            return _parse(source, kind, fp, avprobe.ffprobe_info(source))
        except ProbeError:
            pass  # ffprobe decides, and words the error
    return probe(source, kind, fp, timeout_s=timeout_s, cmd=cmd)


def probe_sources(
    sources: list[str], kind: str, fingerprints: dict[str, str], *, timeout_s: float, concurrency: int
) -> list[ProbeResult | BatchRunnerError]:
    """`probe_source` on every source with at most `concurrency` threads: libavformat's open, stream
    search and decoding run without the GIL in PyAV, so threads use every core (bench/bench_plan.py)."""
    return run_parallel(lambda s: probe_source(s, kind, fingerprints[s], timeout_s=timeout_s), sources, concurrency)


# Leading bytes of common containers: a file that starts like one but fails is damaged,
# a file that does not is simply not media (ffprobe reports both as "invalid data").
_MAGIC = (
    (4, b"ftyp"),
    (0, b"\x1aE\xdf\xa3"),
    (0, b"RIFF"),
    (0, b"OggS"),
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),
    (0, b"\x89PNG"),
    (0, b"\xff\xd8\xff"),
    (0, b"GIF8"),
)


def _has_media_magic(source: str) -> bool | None:
    if is_remote(source, data_uri=False):
        return None
    try:
        with open(source, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return None
    return any(head[at : at + len(magic)] == magic for at, magic in _MAGIC)


def _explain(stderr: str, kind: str, media_magic: bool | None) -> str:
    last = stderr.strip().splitlines()[-1] if stderr.strip() else "ffprobe failed"
    low = stderr.lower()
    if media_magic is False:
        return f"not a {kind} file ({last})"
    if "moov atom not found" in low or "end of file" in low or "truncat" in low or media_magic:
        return f"truncated or corrupt file ({last})"
    if "invalid data found" in low:
        return f"not a {kind} file ({last})"
    if "server returned" in low or "connection" in low or "failed to resolve" in low:
        return f"unreachable ({last})"
    return last


def _parse(source: str, kind: str, fp: str, info: dict[str, Any]) -> ProbeResult:
    streams = info.get("streams") or []
    fmt = info.get("format") or {}
    video = next(
        (s for s in streams if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")),
        None,
    )
    if video is None:
        raise ProbeError(f"{source}: no video stream; not a {kind} file")
    is_image = fmt.get("format_name", "") in IMAGE_FORMATS
    if kind == "video" and is_image:
        raise ProbeError(f"{source}: is an image, not a video", hint="use it as an image_url input")
    if kind == "image" and not is_image and _is_moving(video, fmt):
        raise ProbeError(
            f"{source}: is a video, not an image", hint="give a still image (PNG, JPEG, WebP) for this endpoint"
        )
    duration = None
    if kind == "video":
        duration = _decimal(video.get("duration")) or _decimal(fmt.get("duration"))
        if duration is None or duration <= 0:
            raise ProbeError(f"{source}: no duration; truncated or corrupt video")
    size = fmt.get("size")
    return ProbeResult(
        source=source,
        fingerprint=fp,
        kind=kind,
        duration=duration,
        width=int(video.get("width") or 0),
        height=int(video.get("height") or 0),
        fps=video.get("avg_frame_rate") if kind == "video" else None,
        codec=str(video.get("codec_name", "")),
        rotation=_rotation(video),
        has_audio=any(s.get("codec_type") == "audio" for s in streams),
        size_bytes=int(size) if size and str(size).isdigit() else None,
    )


def _is_moving(video: dict[str, Any], fmt: dict[str, Any]) -> bool:
    """More than one frame, or a duration longer than one: a video, whatever its container."""
    frames = str(video.get("nb_frames") or "")
    if frames.isdigit():
        return int(frames) > 1
    duration = _decimal(video.get("duration")) or _decimal(fmt.get("duration"))
    return duration is not None and duration > Decimal("0.1")


def _decimal(value: Any) -> Decimal | None:
    if value in (None, "", "N/A"):
        return None
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def _rotation(stream: dict[str, Any]) -> int:
    rotate = (stream.get("tags") or {}).get("rotate")
    if rotate is None:
        for side in stream.get("side_data_list") or ():
            if "rotation" in side:
                rotate = side["rotation"]
                break
    try:
        return int(float(rotate or 0)) % 360
    except ValueError:
        return 0


# --------------------------------------------------------------------------- parallel helper


def run_parallel(func: Callable[[_T], Any], items: Iterable[_T], concurrency: int) -> list[Any]:
    """Apply func to every item with at most `concurrency` threads; each result is the
    return value or the BatchRunnerError it raised (other exceptions propagate)."""

    def guarded(item: _T) -> Any:
        try:
            return func(item)
        except ToolMissingError:
            raise
        except BatchRunnerError as exc:
            return exc

    items = list(items)
    if len(items) <= 1 or concurrency <= 1:
        return [guarded(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(concurrency, len(items), (os.cpu_count() or 2) * 8)) as pool:
        return list(pool.map(guarded, items))
