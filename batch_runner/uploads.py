"""Local sources uploaded to fal's storage once per content: a process-wide cache by content
hash over the job table's `uploads` rows, each reused while fal still keeps the file."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

from . import probe
from .api.client import FalClient
from .db.queue import JobQueue

# Every upload asks fal to keep the file this long (X-Fal-Object-Lifecycle, api/client.py); without
# it the account's retention applies, which is configurable
# (https://docs.fal.ai/documentation/model-apis/media-expiration).
UPLOAD_LIFETIME_S = 7 * 24 * 3600
# An uploaded URL is reused for a day less than that, counted from before its upload began (fal
# cannot start the file's clock earlier): the day covers a job that waits in fal's queue before
# its runner fetches the source.
UPLOAD_TTL_S = UPLOAD_LIFETIME_S - 24 * 3600.0


class Uploads:
    """The uploads one worker process makes, shared by its threads."""

    def __init__(self, client: FalClient, queue: JobQueue) -> None:
        self.client, self.queue = client, queue
        self._upload_locks: dict[str, threading.Lock] = {}
        self._uploaded: dict[str, tuple[str, float]] = {}  # content sha256 → URL and its reuse deadline (monotonic)
        self._digests: dict[str, str] = {}  # file fingerprint → content sha256
        self._lock = threading.Lock()

    def url(self, path: Path) -> str:
        """fal's URL for a local file's content: this process's, the job table's within its
        reuse window, or a fresh upload (two threads with the same content upload it once)."""
        fp = probe.fingerprint(str(path))
        with self._lock:
            digest = self._digests.get(fp)
        if digest is None:
            with path.open("rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            with self._lock:
                self._digests[fp] = digest
        with self._lock:
            known = self._uploaded.get(digest)
            lock = self._upload_locks.setdefault(digest, threading.Lock())
        if known is not None and time.monotonic() < known[1]:
            return known[0]
        with lock:  # two threads with the same source upload it once
            with self._lock:
                known = self._uploaded.get(digest)
            if known is not None and time.monotonic() < known[1]:
                return known[0]
            base = self.client.hosts.cdn
            url = self.queue.cached_upload(digest, base)  # within the reuse window it was stored with
            if url is not None:
                return url
            started = time.monotonic()
            url = self.client.upload(path, lifetime_s=UPLOAD_LIFETIME_S)
            left_s = UPLOAD_TTL_S - (time.monotonic() - started)
            self.queue.store_upload(digest, base, url, path.stat().st_size, left_s)
            with self._lock:
                self._uploaded[digest] = (url, started + UPLOAD_TTL_S)
            return url
