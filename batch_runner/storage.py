"""Object stores (s3://, gs://, az:// and the other object stores fsspec knows) for sources, rows files and output
roots: glob, read, fingerprint (ETag + size), presign, and a verified write through a temporary key.

Credentials come from each store's own chain (for S3: AWS_* variables, profiles, instance roles;
AWS_ENDPOINT_URL or fsspec's config for S3-compatible stores), never from a manifest; no message
here quotes a presigned URL, whose query string is a bearer credential.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # fsspec is imported on the first object-store URL: with it come asyncio and ssl
    from fsspec.spec import AbstractFileSystem  # type: ignore[import-untyped]  # fsspec ships no types

from .config.keys import STORE_URL_LIFETIME_S
from .errors import ProbeError, shorten

#: ffprobe reads a source during planning within seconds; the URL dies soon after.
PROBE_URL_LIFETIME_S = 15 * 60
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)
#: fsspec's object stores (S3 and S3-compatible, GCS, Azure Blob/Data Lake, Alibaba OSS, OCI, Volcengine
#: TOS): objects with an ETag. Other fsspec schemes (ftp, sftp, smb, …) are file servers, not stores.
STORE_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "oci", "tos"})


class StoreError(ProbeError):
    """An object-store URL could not be read, written or presigned."""

    default_hint = "check the URL, the bucket and the store credentials (AWS_* variables, profile, endpoint)"


class CannotPresignError(StoreError):
    """The store has no presigned URLs (the caller uploads the bytes instead)."""


def is_store(value: str) -> bool:
    """Whether a value is an object-store URL such as s3://bucket/key (not http(s), not a path)."""
    m = _SCHEME.match(value)
    return m is not None and m.group(1).lower() in STORE_SCHEMES


def _s3_options(url: str) -> dict[str, Any]:
    """S3 signs in Signature Version 4, whatever botocore picks for the region and endpoint (it
    presigns some URLs in SigV2, which AWS has turned off for buckets made since June 2020 and
    for every Region launched since 2014: AWS S3 API reference, "Specifying the Signature Version
    in request authentication"); other options from fsspec's config are kept."""
    m = _SCHEME.match(url)
    if m is None or m.group(1).lower() not in ("s3", "s3a"):
        return {}
    import fsspec  # type: ignore[import-untyped]

    configured = fsspec.config.conf.get("s3", {}).get("config_kwargs", {})
    return {"config_kwargs": {**configured, "signature_version": "s3v4"}}


def _fs(url: str) -> tuple[AbstractFileSystem, str]:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url, **_s3_options(url))
    except ImportError as exc:  # a scheme whose backend (gcsfs, adlfs, …) is not installed: fsspec names it
        raise StoreError(f"{shorten(url)}: no file system for this scheme", hint=shorten(str(exc), 100)) from None
    except Exception as exc:  # each backend fails to start (bad config, no region) with errors of its own
        raise _fail(url, "cannot open the store", exc) from exc
    return fs, path


def _fail(url: str, what: str, exc: BaseException) -> StoreError:
    if isinstance(exc, FileNotFoundError):
        return StoreError(f"{shorten(url)}: {what}: not found (no such object or bucket)")
    if isinstance(exc, PermissionError):
        return StoreError(f"{shorten(url)}: {what}: access denied")
    return StoreError(f"{shorten(url)}: {what}: {type(exc).__name__}: {shorten(str(exc), 120)}")


def _call(url: str, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs) with the store's failures translated at this boundary."""
    try:
        return fn(*args, **kwargs)
    except StoreError:
        raise
    except Exception as exc:  # OSError subclasses mostly, but botocore/aiohttp errors have no common root
        raise _fail(url, what, exc) from exc


def join(root: str, key: str) -> str:
    return root.rstrip("/") + "/" + key.lstrip("/")


def contained_key(root: str, rendered: str) -> str | None:
    """root + rendered as a normalized URL, or None when the key leaves the root ('..', absolute)."""
    if rendered.startswith("/") or "\\" in rendered:
        return None
    key = posixpath.normpath(rendered)
    if key in (".", "") or key == ".." or key.startswith("../"):
        return None
    return join(root, key)


def glob(pattern: str) -> list[str]:
    """Every object a pattern matches, sorted, as full URLs."""
    fs, path = _fs(pattern)
    fs.invalidate_cache()  # a listing cached by an earlier plan in this process may be stale
    found = _call(pattern, "cannot list", fs.glob, path, detail=True)
    # in the pattern's own scheme: a backend's first name may be another (adlfs names az:// abfs://)
    scheme = pattern.split("://", 1)[0]
    return sorted(f"{scheme}://{p.lstrip('/')}" for p, info in found.items() if info.get("type") == "file")


def info(url: str) -> dict[str, Any]:
    """The object's metadata (size, ETag); a folder, a missing object or bucket is a StoreError."""
    fs, path = _fs(url)
    fs.invalidate_cache(path)  # the ETag must be the object's now, not a cached listing's
    got: dict[str, Any] = _call(url, "cannot read", fs.info, path)
    if got.get("type") != "file":
        raise StoreError(f"{shorten(url)}: is a folder, not an object", hint="use a glob such as s3://bucket/dir/*.mp4")
    return got


def fingerprint(url: str) -> str:
    """URL + ETag + size: changes whenever the object is replaced, so the probe cache and the
    plan diff treat objects like files."""
    got = info(url)
    size = int(got.get("size") or 0)
    if size == 0:
        raise StoreError(f"{shorten(url)}: object is empty (0 bytes)", hint="re-upload the source")
    etag = str(got.get("ETag") or got.get("etag") or got.get("md5Hash") or got.get("etag_md5") or "").strip('"')
    return f"store:{url}:{etag}:{size}"


def read_bytes(url: str) -> bytes:
    fs, path = _fs(url)
    data: bytes = _call(url, "cannot read", fs.cat_file, path)
    return data


def presign(url: str, lifetime_s: int) -> str:
    """An HTTPS URL that reads the object for lifetime_s; CannotPresignError when the store has none."""
    fs, path = _fs(url)
    try:
        signed: str = fs.sign(path, expiration=lifetime_s)
    except NotImplementedError:
        raise CannotPresignError(f"{shorten(url)}: this store cannot presign URLs") from None
    except Exception as exc:  # the backend's own errors (credentials, endpoint), translated here
        raise _fail(url, "cannot presign", exc) from exc
    return signed


def url_for_fal(url: str, upload: Callable[[Path], str], lifetime_s: int = STORE_URL_LIFETIME_S) -> str:
    """What fal is handed for an object: a presigned URL that outlasts the queue wait (no byte
    through the worker), or from a store that cannot presign, a copy uploaded with `upload`."""
    try:
        return presign(url, lifetime_s)
    except CannotPresignError:
        with _local_copy(url) as local:
            return upload(local)


@contextlib.contextmanager
def readable(url: str, lifetime_s: int) -> Iterator[str]:
    """Where ffprobe can read an object: a presigned URL (it reads only the bytes it needs), or
    from a store that cannot presign, a temporary local copy, removed afterwards."""
    try:
        signed = presign(url, lifetime_s)
    except CannotPresignError:
        with _local_copy(url) as local:
            yield str(local)
        return
    yield signed


@contextlib.contextmanager
def _local_copy(url: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="batch-runner-") as tmp:
        local = Path(tmp) / (posixpath.basename(url) or "source")
        download(url, local)
        yield local


def download(url: str, local: Path) -> None:
    """Copy an object to a local file (the fallback when a store cannot presign)."""
    fs, path = _fs(url)
    _call(url, "cannot read", fs.get_file, path, str(local))


def put_verified(local: Path, url: str) -> None:
    """Write a local file to url so that it appears whole or not at all: upload to a temporary key
    beside it (s3fs switches to multipart for large files), check its size and, for a single-part
    upload, its MD5 ETag, then copy into place and remove the temporary key."""
    fs, path = _fs(url)
    tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex}.part")
    size = local.stat().st_size
    try:
        _call(url, "cannot write", fs.put_file, str(local), tmp)
        got = _call(url, "cannot check the written object", fs.info, tmp)
        etag = str(got.get("ETag") or "").strip('"')
        if int(got.get("size") or -1) != size:
            raise StoreError(f"{shorten(url)}: the written object has {got.get('size')} bytes, not {size}")
        if etag and "-" not in etag and len(etag) == 32 and etag != _md5(local):
            raise StoreError(f"{shorten(url)}: the written object's checksum differs from the download")
        _call(url, "cannot move into place", fs.copy, tmp, path)
    finally:
        with contextlib.suppress(Exception):  # best effort: a leftover temporary key is harmless
            fs.rm_file(tmp)


def put_text(url: str, text: str) -> None:
    fs, path = _fs(url)
    _call(url, "cannot write", fs.pipe_file, path, text.encode())


def exists(url: str) -> bool:
    fs, path = _fs(url)
    return bool(_call(url, "cannot read", fs.exists, path))


def check_writable_root(url: str) -> None:
    """The bucket (or container) of an output root exists and can be listed: a missing bucket is an
    error at plan time, before money is spent on outputs with nowhere to go."""
    fs, path = _fs(url)
    bucket = path.split("/", 1)[0]
    if not _call(url, "cannot reach the bucket", fs.exists, bucket):
        raise StoreError(f"{shorten(url)}: bucket {shorten(bucket)} does not exist or is not visible")


def _md5(local: Path) -> str:
    with local.open("rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()
