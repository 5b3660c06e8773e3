"""Producing a request's output video: fetch its media inputs, probe them, render it once.

Renders run in a thread pool and are shared: once per distinct job (params and media digests),
or once per output shape in instant or reuse mode. Stored files never change, so they are probed
once.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from .. import catalog
from ..domain import is_remote
from . import render
from .config import EmulatorConfig
from .request import Request, canonical_hash
from .store import FileStore

DOWNLOAD_TIMEOUT_S = 30.0


class Producer:
    """Fetches, probes and renders for the queue; owns the render pool and the download client."""

    def __init__(self, config: EmulatorConfig, store: FileStore, workdir: Path) -> None:
        self.config, self.store, self.workdir = config, store, workdir
        self._renders: dict[str, asyncio.Future[Path]] = {}
        self.renders_made = 0  # distinct outputs rendered with ffmpeg
        self.probes_made = 0  # inputs read with ffprobe
        # stored files never change: probe each once (per kind of read)
        self._input_info: dict[tuple[Path, bool], asyncio.Future[render.MediaInfo]] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="render")
        self._http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT_S, follow_redirects=True)

    async def stop(self) -> None:
        if self._http:
            await self._http.aclose()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def probe_input(self, path: Path, *, video: bool) -> render.MediaInfo:
        """Probe an input once: a stored file's probe is shared by every request that reads it,
        including those that arrive while it runs (a batch sends dozens of jobs per source at once;
        each used to start its own ffprobe)."""
        loop = asyncio.get_running_loop()
        probe = functools.partial(render.probe_media, path, video=video)
        if not path.is_relative_to(self.store.root):
            self.probes_made += 1
            return await loop.run_in_executor(self._pool, probe)
        key = (path, video)
        fut = self._input_info.get(key)
        if fut is None:
            self.probes_made += 1
            fut = loop.run_in_executor(self._pool, probe)
            self._input_info[key] = fut
            fut.add_done_callback(functools.partial(_forget_failed, self._input_info, key))
        return await asyncio.shield(fut)

    async def fetch_inputs(self, req: Request) -> dict[str, Path]:
        """Download every media input to a local file (our own URLs are read from disk)."""
        out: dict[str, Path] = {}
        for name in req.endpoint.media_fields:
            url = req.input.get(name)
            if not isinstance(url, str):
                continue
            try:
                out[name] = await self._fetch(url, req.id, name)
            except render.RenderError as exc:
                exc.field = name
                raise
        return out

    async def _fetch(self, url: str, rid: str, name: str) -> Path:
        local = self.store.local_path(url)
        if local is not None:
            return local
        target = self.workdir / "inputs" / rid / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if url.startswith("data:"):
            try:
                target.write_bytes(base64.b64decode(url.split(",", 1)[1]))
            except (IndexError, ValueError) as exc:
                raise render.RenderError(f"Failed to decode the data URI of {name}") from exc
            return target
        if not is_remote(url, data_uri=False):
            raise render.RenderError(f"Failed to download {name}: not an http(s) or data URL")
        assert self._http is not None
        try:
            async with self._http.stream("GET", url) as resp:
                # An input fal cannot download (a dead link, an expired or refused presigned URL:
                # S3 answers 403, a deleted object 404) fails the request as a 422 whose detail has
                # type file_download_error (fal docs, docs.fal.ai/errors "Model errors"; reference §7).
                if resp.status_code >= 400:
                    raise render.RenderError(f"Failed to download {name}: HTTP {resp.status_code}")
                with target.open("wb") as fh:
                    async for chunk in resp.aiter_bytes():
                        fh.write(chunk)
        except httpx.HTTPError as exc:
            raise render.RenderError(f"Failed to download {name}: {type(exc).__name__}") from exc
        return target

    async def render(
        self, ep: catalog.Endpoint, params: dict[str, Any], inputs: dict[str, Path], spec: catalog.OutputSpec
    ) -> Path:
        """Render once per distinct job (once per output shape in instant or reuse mode) and reuse."""
        if self.config.instant or self.config.reuse_renders:
            key = f"{ep.family}|{spec.width}x{spec.height}|{spec.duration}"
        else:
            digests = {k: _file_digest(p) for k, p in sorted(inputs.items())}
            key = canonical_hash(ep.id, {"params": params, "media": digests})
        key = hashlib.sha256(key.encode()).hexdigest()
        fut = self._renders.get(key)
        if fut is None:
            out = self.workdir / "renders" / f"{key}.mp4"
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(self._pool, _render_to, ep, params, inputs, spec, out, self.config.fps)
            self._renders[key] = fut
            self.renders_made += 1
            fut.add_done_callback(functools.partial(_forget_failed, self._renders, key))
        return await asyncio.shield(fut)


def _forget_failed(shared: dict[Any, Any], key: Any, fut: asyncio.Future[Any]) -> None:
    """A failed or cancelled shared render or probe is tried afresh by the next request."""
    if fut.cancelled() or fut.exception() is not None:
        shared.pop(key, None)


def _file_digest(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _render_to(
    ep: catalog.Endpoint, params: dict[str, Any], inputs: dict[str, Path], spec: catalog.OutputSpec, out: Path, fps: int
) -> Path:
    if not out.exists():
        tmp = out.with_suffix(".tmp.mp4")
        render.render(ep, params, inputs, spec, tmp, fps=fps)
        tmp.replace(out)
    return out
