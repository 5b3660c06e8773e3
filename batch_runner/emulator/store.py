"""The emulator's file storage: uploads (single part, multipart, initiate-then-PUT) and outputs.

Every file is served back at `{base}/files/{id}/{name}`; an input URL that points here is read
from disk instead of over HTTP.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
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


@dataclass
class Multipart:
    file: StoredFile
    parts: dict[int, Path] = field(default_factory=dict)


class FileStore:
    """Files on disk under one folder, by id; safe to use from several threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, StoredFile] = {}
        self._multipart: dict[str, Multipart] = {}
        self._pending: dict[str, StoredFile] = {}  # initiate-then-PUT uploads by token
        self._lock = threading.Lock()

    def _new(self, name: str | None, content_type: str | None, *, complete: bool) -> StoredFile:
        fid = secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")
        clean = _SAFE_NAME.sub("_", name or "upload.bin").strip("._") or "upload.bin"
        folder = self.root / fid
        folder.mkdir()
        f = StoredFile(fid, clean, content_type or "application/octet-stream", folder / clean, complete=complete)
        with self._lock:
            self._files[fid] = f
        return f

    def put(self, data: bytes, name: str | None, content_type: str | None) -> StoredFile:
        f = self._new(name, content_type, complete=True)
        f.path.write_bytes(data)
        f.size = len(data)
        return f

    def reserve(self, name: str | None, content_type: str | None) -> StoredFile:
        """A file whose bytes arrive later (rendered outputs, initiate-then-PUT uploads)."""
        return self._new(name, content_type, complete=False)

    def finish(self, f: StoredFile) -> None:
        f.size = f.path.stat().st_size
        f.complete = True

    def get(self, fid: str) -> StoredFile | None:
        with self._lock:
            return self._files.get(fid)

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

    def initiate(self, name: str | None, content_type: str | None) -> tuple[str, StoredFile]:
        token = secrets.token_urlsafe(16)
        f = self.reserve(name, content_type)
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

    def start_multipart(self, name: str | None, content_type: str | None) -> tuple[str, StoredFile]:
        upload_id = secrets.token_urlsafe(12)
        f = self.reserve(name, content_type)
        with self._lock:
            self._multipart[upload_id] = Multipart(f)
        return upload_id, f

    def put_part(self, fid: str, upload_id: str, number: int, data: bytes) -> str | None:
        with self._lock:
            mp = self._multipart.get(upload_id)
        if mp is None or mp.file.id != fid or number < 1:
            return None
        part = mp.file.path.parent / f".part{number:05d}"
        part.write_bytes(data)
        mp.parts[number] = part
        return '"' + hashlib.md5(data).hexdigest() + '"'  # noqa: S324 - an ETag, as S3 computes it

    def complete_multipart(self, fid: str, upload_id: str, parts: list[dict]) -> StoredFile | None:
        with self._lock:
            mp = self._multipart.get(upload_id)
        if mp is None or mp.file.id != fid:
            return None
        # fal-client uploads parts in parallel and lists them in completion order: sort them.
        numbers = sorted(int(p["partNumber"]) for p in parts)
        if not numbers or numbers != list(range(1, len(numbers) + 1)) or any(n not in mp.parts for n in numbers):
            return None
        with mp.file.path.open("wb") as out:
            for n in numbers:
                out.write(mp.parts[n].read_bytes())
                mp.parts[n].unlink()
        with self._lock:
            self._multipart.pop(upload_id, None)
        self.finish(mp.file)
        return mp.file
