"""fal's storage routes: CDN tokens, uploads (single part, multipart, initiate-then-PUT) and file downloads."""

# Downloads are public (a file URL is its own credential) and meet outages, call faults (429, nginx
# 502/503), truncation, slowness and the download hold, in that order.

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import unquote

from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, Response, StreamingResponse

from . import control
from .queue import canonical_hash
from .store import StoredFile
from .web import BadBody, DropConnection, Emulator, handler, json_answer, read_body, unauthorized

SLOW_CHUNK = 64 * 1024
SLOW_DELAY_S = 0.05


@handler()
async def storage_token(emu: Emulator, request: HttpRequest) -> Response:
    token = f"cdn-{len(emu.cdn_tokens)}-{int(time.time() * 1000)}"
    expires = datetime.now(timezone.utc) + timedelta(hours=1)
    emu.cdn_tokens[token] = expires.timestamp()
    return json_answer({"token": token, "token_type": "Bearer", "base_url": emu.base_url(request),
                        "expires_at": expires.isoformat()})


@handler()
async def storage_initiate(emu: Emulator, request: HttpRequest) -> Response:
    try:
        body = await read_body(request)
    except BadBody as exc:
        return json_answer({"detail": str(exc)}, 422)
    token, f = emu.store.initiate(body.get("file_name"), body.get("content_type"))
    base = emu.base_url(request)
    return json_answer({"upload_url": f"{base}/storage/upload/target/{token}", "file_url": emu.store.url(base, f)})


@handler(auth=False)  # the upload URL itself is the credential, as with a signed URL
async def storage_put(emu: Emulator, request: HttpRequest) -> Response:
    f = emu.store.put_pending(request.path_params["token"], await request.body())
    return json_answer({"detail": "unknown upload"}, 404) if f is None else Response(status_code=200)


@handler()
async def cdn_upload(emu: Emulator, request: HttpRequest) -> Response:
    data = await request.body()
    fault = emu.call_fault("upload", canonical_hash("upload", {"size": len(data)}))
    if fault is not None:
        return fault
    f = emu.store.put(data, request.headers.get("x-fal-file-name"), request.headers.get("content-type"))
    return json_answer({"access_url": emu.store.url(emu.base_url(request), f), "content_type": f.content_type,
                        "file_name": f.name, "file_size": f.size})


@handler()
async def cdn_multipart_start(emu: Emulator, request: HttpRequest) -> Response:
    upload_id, f = emu.store.start_multipart(request.headers.get("x-fal-file-name"),
                                             request.headers.get("content-type"))
    return json_answer({"access_url": emu.store.url(emu.base_url(request), f), "uploadId": upload_id})


@handler(auth=False)
async def cdn_file(emu: Emulator, request: HttpRequest) -> Response:
    """GET a file (public, with Range), or PUT a part / POST completion of a multipart upload."""
    fid, name = request.path_params["fid"], unquote(request.path_params["name"])
    rest = request.path_params.get("rest", "")
    if rest:
        return await _multipart(emu, request, fid, rest)
    outage = emu.outage_answer()
    if outage is not None:
        return outage
    f = emu.store.get(fid)
    if f is None or not f.complete or f.name != name:
        return json_answer({"detail": "File not found"}, 404)
    return _download(emu, request, f)


def _download(emu: Emulator, request: HttpRequest, f: StoredFile) -> Response:
    # Keyed by the file's name (outputs are named after their request id) and the nth download of
    # it, not by the random file id, so the same seed picks the same downloads.
    n = emu.count("download", f.name)
    fault = emu.call_fault_at(n, "download", f.name)
    if fault is not None:
        return fault
    if emu.faults.fires("truncate_download", f.name, n):
        return _Truncated(f.path, f.content_type)
    if emu.faults.fires("slow_download", f.name, n):
        return StreamingResponse(_slow(f.path), media_type=f.content_type, headers={"Content-Length": str(f.size)})
    if request.method == "GET" and "range" not in request.headers:  # a whole-file GET: the hold may catch it
        seconds = emu.holds.download.take()
        if seconds:
            return _Held(f.path, f.content_type, emu.holds.download, seconds)
    return FileResponse(f.path, media_type=f.content_type)


async def _multipart(emu: Emulator, request: HttpRequest, fid: str, rest: str) -> Response:
    if not emu.authorized(request):
        return unauthorized()
    bits = rest.split("/")
    if len(bits) == 3 and bits[0] == "multipart" and request.method == "PUT" and bits[2].isdigit():
        etag = emu.store.put_part(fid, bits[1], int(bits[2]), await request.body())
        return json_answer({"detail": "unknown upload"}, 404) if etag is None else Response(headers={"ETag": etag})
    if len(bits) == 3 and bits[0] == "multipart" and bits[2] == "complete" and request.method == "POST":
        try:
            parts = (await read_body(request)).get("parts") or []
        except BadBody as exc:
            return json_answer({"detail": str(exc)}, 422)
        f = emu.store.complete_multipart(fid, bits[1], parts)
        if f is None:
            return json_answer({"detail": "parts missing or out of order"}, 400)
        return json_answer({"access_url": emu.store.url(emu.base_url(request), f)})
    return json_answer({"detail": "Not found"}, 404)


async def _slow(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(SLOW_CHUNK):
            yield chunk
            await asyncio.sleep(SLOW_DELAY_S)


def _start(kind: str, size: int) -> dict[str, Any]:
    return {"type": "http.response.start", "status": 200,
            "headers": [(b"content-type", kind.encode()), (b"content-length", str(size).encode())]}


class _Truncated(Response):
    """Announces the whole file, sends half of it, then drops the connection."""

    def __init__(self, path: Path, media_type: str) -> None:
        super().__init__(status_code=200)
        self.path, self.kind = path, media_type

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        data = self.path.read_bytes()
        await send(_start(self.kind, len(data)))
        await send({"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True})
        raise DropConnection()


class _Held(Response):
    """Sends the headers and the first half of the file, holds, then sends the rest."""

    def __init__(self, path: Path, media_type: str, hold: control.Hold, seconds: float) -> None:
        super().__init__(status_code=200)
        self.path, self.kind, self.hold, self.seconds = path, media_type, hold, seconds

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        data = self.path.read_bytes()
        await send(_start(self.kind, len(data)))
        await send({"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True})
        if await control.hold(self.hold, self.seconds, receive):
            return  # the client went away inside the hold: nobody is left to send the rest to
        await send({"type": "http.response.body", "body": data[len(data) // 2:], "more_body": False})
