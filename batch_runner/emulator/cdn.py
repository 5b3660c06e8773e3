"""fal's storage routes: CDN tokens, uploads (single part, multipart, initiate-then-PUT) and file downloads."""

# Uploads that ask for a lifetime (X-Fal-Object-Lifecycle or -Preference) get it, others get
# `upload_ttl_s`; an expired file is 404, so a request naming it fails with file_download_error.
# CDN tokens expire after `token_ttl_s`: an upload carrying an expired one is 401.
# Downloads are public (a file URL is its own credential) and meet outages, call faults (429, nginx
# 502/503), truncation, slowness and the download hold, in that order.

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, Response, StreamingResponse

from . import control
from .request import canonical_hash
from .store import StoredFile
from .web import BadBodyError, DropConnectionError, Emulator, handler, json_answer, read_body, unauthorized

SLOW_CHUNK = 64 * 1024
SLOW_DELAY_S = 0.05


class BadLifecycleError(ValueError):
    """The object-lifecycle header is not the JSON object fal's clients send."""


def _lifetime(emu: Emulator, request: HttpRequest) -> float | None:
    """The lifetime an upload asks for, else the emulator's default (None: kept for good).

    fal-client sends the same JSON as `X-Fal-Object-Lifecycle` and `X-Fal-Object-Lifecycle-Preference`
    on every upload call ("CDN uploads expect X-Fal-Object-Lifecycle, while storage-backed upload
    initiation uses X-Fal-Object-Lifecycle-Preference": fal:projects/fal_client/src/fal_client/client.py
    `_object_lifecycle_headers`); fal-js sends `X-Fal-Object-Lifecycle` on initiate and
    initiate-multipart (fal-js:libs/client/src/storage.ts `initiateUpload`, `initiateMultipartUpload`).
    The JSON is `{"expiration_duration_seconds": N, "initial_acl": {...}}`, both optional; "Backends
    treat None and 0 as no-expiration" (fal-client `_UPLOAD_LIFECYCLE_EXPIRATION_VALUES`).
    What fal answers to a malformed header is undocumented: the emulator refuses it (422)."""
    raw = request.headers.get("x-fal-object-lifecycle") or request.headers.get("x-fal-object-lifecycle-preference")
    if raw is None:
        return emu.config.upload_ttl_s
    try:
        pref = json.loads(raw)
    except json.JSONDecodeError:
        raise BadLifecycleError("X-Fal-Object-Lifecycle is not valid JSON") from None
    if not isinstance(pref, dict):
        raise BadLifecycleError("X-Fal-Object-Lifecycle must be a JSON object")
    if "expiration_duration_seconds" not in pref:
        return emu.config.upload_ttl_s  # an ACL alone: the retention stays the account's
    seconds = pref["expiration_duration_seconds"]
    if seconds is None or seconds == 0:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0:
        raise BadLifecycleError("expiration_duration_seconds must be a whole number of seconds")
    return float(seconds)


def _expired_token(emu: Emulator, request: HttpRequest) -> Response | None:
    """401 for a CDN token past its `expires_at`. fal-client refreshes a token once `now >=
    expires_at` (fal:projects/fal_client/src/fal_client/client.py `CDNToken.is_expired`,
    `CDNTokenManager.get_token`), so fal refuses it after; the code and body of that refusal are
    undocumented (fal-fidelity-audit item 1: "401 or 403")."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expires = emu.cdn_tokens.get(token.strip()) if scheme.lower() == "bearer" else None
    if expires is not None and time.time() >= expires:
        return json_answer({"detail": "Token has expired"}, 401)
    return None


@handler()
async def storage_token(emu: Emulator, request: HttpRequest) -> Response:
    token = f"cdn-{len(emu.cdn_tokens)}-{int(time.time() * 1000)}"
    expires = datetime.now(UTC) + timedelta(seconds=emu.config.token_ttl_s)
    emu.cdn_tokens[token] = expires.timestamp()
    return json_answer(
        {"token": token, "token_type": "Bearer", "base_url": emu.base_url(request), "expires_at": expires.isoformat()}
    )


@handler()
async def storage_initiate(emu: Emulator, request: HttpRequest) -> Response:
    try:
        body = await read_body(request)
        lifetime = _lifetime(emu, request)
    except (BadBodyError, BadLifecycleError) as exc:
        return json_answer({"detail": str(exc)}, 422)
    token, f = emu.store.initiate(body.get("file_name"), body.get("content_type"), lifetime)
    base = emu.base_url(request)
    return json_answer({"upload_url": f"{base}/storage/upload/target/{token}", "file_url": emu.store.url(base, f)})


@handler()
async def storage_initiate_multipart(emu: Emulator, request: HttpRequest) -> Response:
    """fal-js's multipart upload (files over 90 MiB, fal-js:libs/client/src/storage.ts `upload`):
    `POST {rest}/storage/upload/initiate-multipart?storage_type=fal-cdn-v3` with the API key and
    JSON `{content_type, file_name}` answers `{upload_url, file_url}` (`initiateMultipartUpload`).
    The client then PUTs each part to `{upload_url path}/{n}{upload_url query}` and POSTs
    `{upload_url path}/complete{query}` (`multipartUpload`), with no Authorization header: the
    URL is the credential, so ours carries a signature in its query, which a client must keep."""
    try:
        body = await read_body(request)
        lifetime = _lifetime(emu, request)
    except (BadBodyError, BadLifecycleError) as exc:
        return json_answer({"detail": str(exc)}, 422)
    upload_id, f = emu.store.start_multipart(body.get("file_name"), body.get("content_type"), lifetime)
    mp = emu.store.multipart(upload_id)
    assert mp is not None
    base = emu.base_url(request)
    return json_answer(
        {
            "upload_url": f"{base}/storage/upload/multipart/{upload_id}?signature={mp.secret}",
            "file_url": emu.store.url(base, f),
        }
    )


@handler(auth=False)  # the signed upload URL is the credential (fal-js sends no key on parts)
async def storage_multipart_part(emu: Emulator, request: HttpRequest) -> Response:
    """PUT `…/{n}`: one part, answered with JSON `{partNumber, etag}`, which fal-js reads from the
    body (storage.ts `partUploadRetries`, type `MultipartObject`). POST `…/complete` with
    `{"parts": [{partNumber, etag}]}` joins them (storage.ts `multipartUpload`; fal-js reads
    nothing from that answer)."""
    upload_id, part = request.path_params["upload_id"], request.path_params["part"]
    mp = emu.store.multipart(upload_id)
    if mp is None:
        return json_answer({"detail": "unknown upload"}, 404)
    if request.query_params.get("signature") != mp.secret:
        return json_answer({"detail": "invalid signature"}, 403)
    ttl = emu.config.signed_url_ttl_s
    if ttl is not None and time.monotonic() - mp.started > ttl:
        return json_answer({"detail": "the signed upload URL has expired"}, 403)
    if request.method == "PUT" and part.isdigit():
        etag = emu.store.put_part(upload_id, int(part), await request.body())
        if etag is None:
            return json_answer({"detail": "unknown upload"}, 404)
        return json_answer({"partNumber": int(part), "etag": etag})
    if request.method == "POST" and part == "complete":
        try:
            parts = (await read_body(request)).get("parts") or []
        except BadBodyError as exc:
            return json_answer({"detail": str(exc)}, 422)
        f = emu.store.complete_multipart(upload_id, parts if isinstance(parts, list) else [])
        if f is None:
            return json_answer({"detail": "parts missing, out of order or with wrong etags"}, 400)
        return json_answer({"file_url": emu.store.url(emu.base_url(request), f)})
    return json_answer({"detail": "Not found"}, 404)


@handler(auth=False)  # the upload URL itself is the credential, as with a signed URL
async def storage_put(emu: Emulator, request: HttpRequest) -> Response:
    f = emu.store.put_pending(request.path_params["token"], await request.body())
    return json_answer({"detail": "unknown upload"}, 404) if f is None else Response(status_code=200)


@handler()
async def cdn_upload(emu: Emulator, request: HttpRequest) -> Response:
    refused = _expired_token(emu, request)
    if refused is not None:
        return refused
    try:
        lifetime = _lifetime(emu, request)
    except BadLifecycleError as exc:
        return json_answer({"detail": str(exc)}, 422)
    data = await request.body()
    fault = emu.call_fault("upload", canonical_hash("upload", {"size": len(data)}))
    if fault is not None:
        return fault
    f = emu.store.put(data, request.headers.get("x-fal-file-name"), request.headers.get("content-type"), lifetime)
    return json_answer(
        {
            "access_url": emu.store.url(emu.base_url(request), f),
            "content_type": f.content_type,
            "file_name": f.name,
            "file_size": f.size,
        }
    )


@handler()
async def cdn_multipart_start(emu: Emulator, request: HttpRequest) -> Response:
    refused = _expired_token(emu, request)
    if refused is not None:
        return refused
    try:
        lifetime = _lifetime(emu, request)
    except BadLifecycleError as exc:
        return json_answer({"detail": str(exc)}, 422)
    upload_id, f = emu.store.start_multipart(
        request.headers.get("x-fal-file-name"), request.headers.get("content-type"), lifetime
    )
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
    refused = _expired_token(emu, request)
    if refused is not None:
        return refused
    bits = rest.split("/")
    if len(bits) == 3 and bits[0] == "multipart" and request.method == "PUT" and bits[2].isdigit():
        etag = emu.store.put_part(bits[1], int(bits[2]), await request.body(), fid=fid)
        return json_answer({"detail": "unknown upload"}, 404) if etag is None else Response(headers={"ETag": etag})
    if len(bits) == 3 and bits[0] == "multipart" and bits[2] == "complete" and request.method == "POST":
        try:
            parts = (await read_body(request)).get("parts") or []
        except BadBodyError as exc:
            return json_answer({"detail": str(exc)}, 422)
        f = emu.store.complete_multipart(bits[1], parts if isinstance(parts, list) else [], fid=fid)
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
    return {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", kind.encode()), (b"content-length", str(size).encode())],
    }


class _Truncated(Response):
    """Announces the whole file, sends half of it, then drops the connection."""

    def __init__(self, path: Path, media_type: str) -> None:
        super().__init__(status_code=200)
        self.path, self.kind = path, media_type

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        data = self.path.read_bytes()
        await send(_start(self.kind, len(data)))
        await send({"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True})
        raise DropConnectionError()


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
        await send({"type": "http.response.body", "body": data[len(data) // 2 :], "more_body": False})
