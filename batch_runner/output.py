"""Delivery of one output: only inside the output root, downloaded to a `.part` file beside the
target, verified, priced when fal sent no billable units, described by a sidecar, then renamed
into place atomically (an object-store target: a local temporary file, then a verified write through
a temporary key). Every way it can go wrong comes back as a value, never as an exception.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from . import catalog, storage
from .api.answers import Reply
from .api.client import FalClient
from .domain import Estimate, ProbeResult, format_seconds, format_usd
from .errors import ProbeError, RemoteError
from .pricing import PriceTable
from .records import AttemptRecord, JobRecord


@dataclass(frozen=True)
class Delivered:
    """A verified download, still in its `.part` file until `Delivery.publish` renames it (or, for an
    object-store target, writes it to the store)."""

    path: Path | str  # a str: an object-store URL
    part: Path
    sha256: str
    size_bytes: int
    measured: ProbeResult
    warnings: tuple[str, ...] = ()  # what differs from our convention but not from what fal promises

    def output_row(self) -> dict[str, Any]:
        d = self.measured.duration
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "width": self.measured.width,
            "height": self.measured.height,
            "duration_us": int(d * 1_000_000) if d is not None else None,
        }


@dataclass(frozen=True)
class NotDelivered:
    """`arrived`: the file came but failed its check (kept aside). Otherwise it never arrived
    whole (fal's file, the network, our disk or the output root): it stays at fal to fetch again."""

    reason: str
    arrived: bool = False
    reply: Reply | None = None  # the failed download's last reply, when fal's side failed
    kept_at: Path | str | None = None


class OutsideRootError(Exception):
    """The output would land outside the output root (a symlink, or a changed folder)."""


def _inside(path: Path, root: Path) -> bool:
    real = Path(os.path.realpath(path))
    return real == root or real.is_relative_to(root)


def prepare_folder(target: Path, output_root: Path) -> None:
    """Create the target's folder, only inside the real output root: every existing part of the
    path is resolved (symlinks included) before anything is created, and again after."""
    root = Path(os.path.realpath(output_root))
    if not _inside(target.parent, root):  # realpath resolves what exists, symlinks included
        raise OutsideRootError(f"{target.parent} resolves outside the output root {output_root}")
    target.parent.mkdir(parents=True, exist_ok=True)
    for path in (target.parent, target, target.with_name(target.name + ".json")):
        if (path.exists() or path.is_symlink()) and not _inside(path, root):
            raise OutsideRootError(f"{path} resolves outside the output root {output_root}")


@dataclass(frozen=True)
class CheckSettings:
    """How a download is checked. fal promises a video (fal-js `I2VOutput {video: File}`, the
    seeds' output schemas), of the aspect ratio a request asks for; no fal source states output
    pixel sizes or exact durations (Ray 2 reframe and modify have no resolution input at all).
    So only those promises fail a job fal billed; a size or length other than the emulator's
    convention (catalog.expected_output) is a warning on a delivered job, unless `strict`."""

    duration_tolerance_s: Decimal = Decimal("0.25")
    strict: bool = False  # --strict-verify: every difference from the convention fails the job
    aspect_tolerance: Decimal = Decimal("0.02")  # relative difference of width/height from the request's


class Delivery:
    """Takes fal's output URL to a verified file at the job's output path."""

    def __init__(
        self,
        client: FalClient,
        prices: PriceTable,
        check: CheckSettings,
        source_probe: Callable[[JobRecord], ProbeResult | None],
    ) -> None:
        self.client, self.prices, self.check, self.source_probe = client, prices, check, source_probe

    def fetch(self, job: JobRecord, attempt_number: int, url: str) -> Delivered | NotDelivered:
        """Download and verify into a `.part` file beside the target (nothing is left on disk
        when it was not delivered)."""
        if storage.is_store(job.output_path):
            return self._fetch_for_store(job, url)
        target = Path(job.output_path)
        root = Path(job.output_root) if job.output_root else target.parent
        # per attempt and process: a worker that took this job over never writes into a dead one's file
        tmp = target.with_name(f".{target.name}.{attempt_number}.{os.getpid()}.part")
        try:
            prepare_folder(target, root)
            sha, size = self.client.download(url, tmp)
        except OutsideRootError as exc:
            return NotDelivered(f"not written: {exc}")
        except RemoteError as exc:
            tmp.unlink(missing_ok=True)
            return _download_failed(exc)
        except OSError as exc:  # a full disk, a read-only folder, a file where the folder should be
            _unlink_quietly(tmp)
            return NotDelivered(f"cannot write {target.parent}: {exc.strerror or type(exc).__name__}")
        problem, warnings, measured = self._verify(job, tmp)
        if problem:
            aside = target.with_name(f"{target.stem}.rejected{target.suffix}")
            try:
                tmp.replace(aside)
            except OSError:
                _unlink_quietly(tmp)
                aside = None  # type: ignore[assignment]
            return NotDelivered(f"output check failed: {problem}", arrived=True, kept_at=aside)
        return Delivered(target, tmp, sha, size, measured, warnings)

    def _fetch_for_store(self, job: JobRecord, url: str) -> Delivered | NotDelivered:
        """Download into a local temporary folder and verify there: the store sees only checked bytes."""
        target = job.output_path
        root = (job.output_root or "").rstrip("/")
        if root and storage.contained_key(root, target[len(root) + 1 :]) != target:
            return NotDelivered(f"not written: {target} is outside the output root {root}")
        folder = Path(tempfile.mkdtemp(prefix="batch-runner-out-"))
        tmp = folder / (target.rsplit("/", 1)[-1] or "output")
        try:
            sha, size = self.client.download(url, tmp)
        except RemoteError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            return _download_failed(exc)
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            return NotDelivered(f"cannot write a temporary file: {exc.strerror or type(exc).__name__}")
        problem, warnings, measured = self._verify(job, tmp)
        if not problem:
            return Delivered(target, tmp, sha, size, measured, warnings)
        stem, dot, suffix = target.rpartition(".")
        aside: str | None = f"{stem}.rejected.{suffix}" if dot else f"{target}.rejected"
        try:
            storage.put_verified(tmp, str(aside))
        except storage.StoreError:
            aside = None
        shutil.rmtree(folder, ignore_errors=True)
        return NotDelivered(f"output check failed: {problem}", arrived=True, kept_at=aside)

    def _publish_to_store(self, delivered: Delivered, sidecar: dict[str, Any]) -> NotDelivered | None:
        """Sidecar first, then the output through a temporary key, checked, copied into place."""
        target = str(delivered.path)
        try:
            storage.put_text(target + ".json", json.dumps(sidecar, indent=2, sort_keys=True))
            storage.put_verified(delivered.part, target)
        except storage.StoreError as exc:
            return NotDelivered(f"cannot write the output: {exc.message}")
        finally:
            shutil.rmtree(delivered.part.parent, ignore_errors=True)
        return None

    def publish(self, delivered: Delivered, sidecar: dict[str, Any]) -> NotDelivered | None:
        """Sidecar first, then the atomic rename: the output appears whole or not at all."""
        if isinstance(delivered.path, str):
            return self._publish_to_store(delivered, sidecar)
        target, tmp = delivered.path, delivered.part
        side = target.with_name(target.name + ".json")
        side_tmp = side.with_name(f".{side.name}.{os.getpid()}.part")
        try:
            side_tmp.write_text(json.dumps(sidecar, indent=2, sort_keys=True))
            side_tmp.replace(side)
            tmp.replace(target)
        except OSError as exc:
            _unlink_quietly(tmp)
            _unlink_quietly(side_tmp)
            return NotDelivered(f"cannot write {target.parent}: {exc.strerror or type(exc).__name__}")
        for stale in target.parent.glob(f".{glob.escape(target.name)}.*.part"):  # left by a worker that died
            _unlink_quietly(stale)
        return None

    def price_delivered(self, job: JobRecord, measured: ProbeResult) -> Estimate:
        """The price table applied to a verified delivery, by the endpoint's billing unit: per
        started source second on the source's probed length (as fal bills it), per second on
        the output's measured length, per video on its parameters alone."""
        ep = catalog.endpoint(job.endpoint)
        src = self.source_probe(job)
        if ep.billing == catalog.PER_STARTED_SOURCE_SECOND and src is not None:
            duration = src.duration
        elif ep.billing == catalog.PER_VIDEO:
            duration = None
        else:
            duration = measured.duration
        return self.prices.estimate(ep, job.params, duration)

    def _verify(self, job: JobRecord, path: Path) -> tuple[str | None, tuple[str, ...], ProbeResult]:
        """Probe the download in-process (avprobe: ffprobe's figures without a process per file):
        (what breaks fal's promise, what differs from our convention, the figures)."""
        from . import avprobe  # PyAV (about 60 ms to import) loads at the first delivery, not before the first submit

        try:
            got = avprobe.probe_video(path, f"file:{path}")
        except ProbeError as exc:
            dummy = ProbeResult(str(path), "", "video", None, 0, 0, None, "", 0, False, None)
            return f"unreadable video: {exc.message}", (), dummy
        width, height = got.display_size
        if not width or not height or not got.duration or got.duration <= 0:
            return f"not a playable video ({width}x{height}, {_secs(got.duration)} s)", (), got
        ep = catalog.endpoint(job.endpoint)
        params = ep.with_defaults(job.params)
        src = self.source_probe(job)
        broken: list[str] = []
        if "aspect_ratio" in params and ep.output_aspect == "param":
            aw, ah = catalog.parse_aspect(str(params["aspect_ratio"]))
            off = abs(Decimal(width) / height / (Decimal(aw) / ah) - 1)
            if off > self.check.aspect_tolerance:
                broken.append(f"asked for {params['aspect_ratio']}, got {width}x{height}")
        try:
            want = catalog.expected_output(ep, params, src.display_size if src else None, src.duration if src else None)
        except ValueError as exc:
            return (broken[0] if broken else None), (f"not compared with the output convention: {exc}",), got
        if not want.duration / 2 <= got.duration <= want.duration * 2 + 1:
            broken.append(f"expected about {_secs(want.duration)} s, got {_secs(got.duration)} s")
        differs = []
        if (width, height) != (want.width, want.height):
            differs.append(f"{width}x{height}, where the output convention expects {want.width}x{want.height}")
        if abs(got.duration - want.duration) > self.check.duration_tolerance_s:
            differs.append(f"{_secs(got.duration)} s, where the output convention expects {_secs(want.duration)} s")
        if broken:
            return broken[0], tuple(differs), got
        if differs and self.check.strict:
            return f"{differs[0]} (--strict-verify)", tuple(differs[1:]), got
        return None, tuple(differs), got


def _download_failed(exc: RemoteError) -> NotDelivered:
    """fal's CDN (or the network) failed the download after its retries: its last reply decides
    whether the breaker hears of it."""
    return NotDelivered(f"download failed: {exc.message}", reply=exc.reply if isinstance(exc.reply, Reply) else None)


def sidecar(
    job: JobRecord,
    attempt: AttemptRecord,
    delivered: Delivered,
    billed_micro_usd: int,
    units: str | None,
    price_source: str,
) -> dict[str, Any]:
    """The provenance written beside every output."""
    m = delivered.measured
    return {
        "endpoint": job.endpoint,
        "input": job.params,
        "request_id": attempt.request_id,
        "attempt": attempt.number,
        "job_key": job.key,
        "project": job.project,
        "source": job.source,
        "source_fingerprint": job.source_fingerprint,
        "output": str(delivered.path),
        "sha256": delivered.sha256,
        "size_bytes": delivered.size_bytes,
        "width": m.width,
        "height": m.height,
        "duration_s": str(m.duration) if m.duration is not None else None,
        "estimated_cost_usd": format_usd(job.estimate_micro_usd),
        "billed_cost_usd": format_usd(billed_micro_usd),
        "billable_units": units,
        "price_table": job.price_table,
        "billed_price_source": price_source,
        "check_warnings": list(delivered.warnings),
    }


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _secs(seconds: Decimal | None) -> str:
    return "?" if seconds is None else format_seconds(seconds)
