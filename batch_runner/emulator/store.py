"""The emulator's file storage: uploads (single part, multipart, initiate-then-PUT) and outputs.

Every file is served back at `{base}/files/{id}/{name}` until its lifetime ends; an input URL
that points here is read from disk instead of over HTTP.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class StoredFile:
    id: str
    name: str
    content_type: str
    path: Path
    size: int = 0
    complete: bool = True
    lifetime_s: float | None = None  # counted from completion; None: kept for good (outputs)
    expires_at: float | None = None  # epoch seconds, set on completion
    parts: int = 0  # how many parts a multipart upload was joined from

    def gone(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass
class Multipart:
    file: StoredFile
    parts: dict[int, Path] = field(default_factory=dict)
    etags: dict[int, str] = field(default_factory=dict)
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(16))  # fal-js flow: the URL's credential
    started: float = field(default_factory=time.monotonic)  # a signed URL expires some time after it is issued


class FileStore:
    """Files on disk under one folder, by id; safe to use from several threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, StoredFile] = {}
        self._multipart: dict[str, Multipart] = {}
        self._pending: dict[str, StoredFile] = {}  # initiate-then-PUT uploads by token
        self._lock = threading.Lock()

    def _new(
        self, name: str | None, content_type: str | None, *, complete: bool, lifetime_s: float | None = None
    ) -> StoredFile:
        fid = secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")
        clean = _SAFE_NAME.sub("_", name or "upload.bin").strip("._") or "upload.bin"
        folder = self.root / fid
        folder.mkdir()
        f = StoredFile(
            fid,
            clean,
            content_type or "application/octet-stream",
            folder / clean,
            complete=complete,
            lifetime_s=lifetime_s,
        )
        with self._lock:
            self._files[fid] = f
        return f

    def put(
        self, data: bytes, name: str | None, content_type: str | None, lifetime_s: float | None = None
    ) -> StoredFile:
        f = self._new(name, content_type, complete=False, lifetime_s=lifetime_s)
        f.path.write_bytes(data)
        self.finish(f)
        return f

    def reserve(self, name: str | None, content_type: str | None, lifetime_s: float | None = None) -> StoredFile:
        """A file whose bytes arrive later (rendered outputs, initiate-then-PUT uploads)."""
        return self._new(name, content_type, complete=False, lifetime_s=lifetime_s)

    def finish(self, f: StoredFile) -> None:
        f.size = f.path.stat().st_size
        if f.lifetime_s is not None:
            f.expires_at = time.time() + f.lifetime_s
        f.complete = True

    def get(self, fid: str) -> StoredFile | None:
        """A file by id; None once its lifetime has ended (fal's CDN answers 404 then)."""
        with self._lock:
            f = self._files.get(fid)
        return None if f is None or f.gone(time.time()) else f

    def url(self, base: str, f: StoredFile) -> str:
        return f"{base}/files/{f.id}/{f.name}"

    def local_path(self, url: str) -> Path | None:
        """The file behind one of our own URLs (any host), or None."""
        parts = urlsplit(url).path.split("/")
        if len(parts) >= 4 and parts[1] == "files":
            f = self.get(parts[2])
            if f is not None and f.complete and unquote(parts[3]) == f.name:
                return f.path
        return None

    # ----------------------------------------------------------------- initiate-then-PUT

    def initiate(
        self, name: str | None, content_type: str | None, lifetime_s: float | None = None
    ) -> tuple[str, StoredFile]:
        token = secrets.token_urlsafe(16)
        f = self.reserve(name, content_type, lifetime_s)
        with self._lock:
            self._pending[token] = f
        return token, f

    def put_pending(self, token: str, data: bytes) -> StoredFile | None:
        with self._lock:
            f = self._pending.pop(token, None)
        if f is not None:
            f.path.write_bytes(data)
            self.finish(f)
        return f

    # ----------------------------------------------------------------- multipart

    def start_multipart(
        self, name: str | None, content_type: str | None, lifetime_s: float | None = None
    ) -> tuple[str, StoredFile]:
        upload_id = secrets.token_urlsafe(12)
        f = self.reserve(name, content_type, lifetime_s)
        with self._lock:
            self._multipart[upload_id] = Multipart(f)
        return upload_id, f

    def multipart(self, upload_id: str) -> Multipart | None:
        with self._lock:
            return self._multipart.get(upload_id)

    def put_part(self, upload_id: str, number: int, data: bytes, *, fid: str | None = None) -> str | None:
        """Store part `number` (1-based); its ETag, or None for an unknown upload."""
        mp = self.multipart(upload_id)
        if mp is None or (fid is not None and mp.file.id != fid) or number < 1:
            return None
        part = mp.file.path.parent / f".part{number:05d}"
        part.write_bytes(data)
        etag = '"' + hashlib.md5(data).hexdigest() + '"'  # an ETag, as S3 computes it
        mp.parts[number], mp.etags[number] = part, etag
        return etag

    def complete_multipart(
        self, upload_id: str, parts: list[dict[str, Any]], *, fid: str | None = None
    ) -> StoredFile | None:
        """Join the listed parts in order. None when the upload is unknown, a part is missing, or
        an etag is not the one that part was given: fal documents no check, but the S3 multipart
        API whose words fal uses (uploadId, partNumber, ETag) refuses that with InvalidPart
        (https://docs.aws.amazon.com/AmazonS3/latest/API/API_CompleteMultipartUpload.html)."""
        mp = self.multipart(upload_id)
        if mp is None or (fid is not None and mp.file.id != fid):
            return None
        # fal-client uploads parts in parallel and lists them in completion order: sort them.
        try:
            listed = {int(p["partNumber"]): str(p.get("etag") or "").strip('"') for p in parts}
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        numbers = sorted(listed)
        if not numbers or numbers != list(range(1, len(numbers) + 1)) or any(n not in mp.parts for n in numbers):
            return None
        if any(listed[n] != mp.etags[n].strip('"') for n in numbers):
            return None
        with mp.file.path.open("wb") as out:
            for n in numbers:
                out.write(mp.parts[n].read_bytes())
                mp.parts[n].unlink()
        with self._lock:
            self._multipart.pop(upload_id, None)
        mp.file.parts = len(numbers)
        self.finish(mp.file)
        return mp.file
