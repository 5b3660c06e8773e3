"""Manifest sources: globs, paths, URLs and CSV/JSONL rows files expanded into concrete sources.

Also the small readers the manifest shares with them: an error at file:line, unknown keys with a
suggestion, tags. Relative paths resolve against the manifest's folder (rows: the rows file's).
"""

from __future__ import annotations

import csv
import difflib
import glob as globlib
import io
import json
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, TypeVar

from . import catalog, storage
from .domain import is_remote
from .errors import ManifestError, ManifestErrorsError, shorten, type_name
from .yamlload import LineDict, LineList

SOURCE_KEYS = ("glob", "path", "url", "rows", "name", "params", "tags")
_KINDS = ("glob", "path", "url", "rows")
_GLOB_CHARS = set("*?[")
_T = TypeVar("_T")


class Problems:
    """Every problem found in a manifest, in order and once each, so the user sees them all at once."""

    def __init__(self) -> None:
        self.errors: list[ManifestError] = []
        self._seen: set[str] = set()

    def add(self, err: ManifestError) -> None:
        for one in err.errors if isinstance(err, ManifestErrorsError) else [err]:
            if str(one) not in self._seen:
                self._seen.add(str(one))
                self.errors.append(one)

    def attempt(self, fn: Callable[..., _T], *args: Any) -> _T | None:
        """fn(*args), or None with its problems noted."""
        try:
            return fn(*args)
        except ManifestError as err:
            self.add(err)
            return None

    def raise_any(self) -> None:
        """Raise what was found: one error as itself, several as one ManifestErrorsError."""
        raise_all(self.errors)


def raise_all(errors: list[ManifestError]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        limit = ManifestErrorsError.LIMIT
        raise ManifestErrorsError(errors[:limit], max(len(errors) - limit, 0))


@dataclass
class Source:
    """One concrete source before the matrix is applied."""

    source: str | None
    stem: str
    ext: str
    params: dict[str, Any]
    where: dict[str, str]  # param → file:line it came from
    tags: tuple[str, ...]
    origin: str


def manifest_error(
    msg: str, file: str, line: int | None, fld: str | None = None, hint: str | None = None
) -> ManifestError:
    """A ManifestError at file:line, naming the field and one hint."""
    return ManifestError(msg, file=file, line=line, field=fld, hint=hint)


def reject_unknown_keys(d: LineDict, allowed: tuple[str, ...], file: str, context: str) -> None:
    """Raise for every key that is not allowed, each suggesting the closest allowed one."""
    errors = []
    for key in d:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            errors.append(
                manifest_error(
                    f"unknown key in {context}",
                    file,
                    d.line_of(key),
                    shorten(key, 40).strip("'"),
                    f'did you mean "{close[0]}"?' if close else f"allowed: {', '.join(allowed)}",
                )
            )
    raise_all(errors)


def read_tags(value: Any, file: str, line: int, fld: str) -> tuple[str, ...]:
    """Tags as a list of strings, or one string separated by commas or semicolons."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = re.split(r"[;,]", value)
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise manifest_error(
            f"must be a list of strings, got {type_name(value)}", file, line, fld, "e.g. tags: [nightly, social]"
        )
    return tuple(t.strip() for t in value if t.strip())


def expand_sources(
    doc: LineDict, ep: catalog.Endpoint, base: Path, file: str, warnings: list[str], problems: Problems
) -> list[Source]:
    """Every concrete source of the manifest's `sources:` list, in written order; each item's
    problems are noted and the next item is read."""
    items = doc.get("sources")
    if items is None:
        problems.add(
            manifest_error(
                "is required: a list of globs, paths, URLs or rows files",
                file,
                doc.line,
                "sources",
                'e.g. sources: [{glob: "media/*.mp4"}]',
            )
        )
        return []
    if not isinstance(items, LineList) or not items:
        problems.add(
            manifest_error(
                f"must be a non-empty list, got {type_name(items)}",
                file,
                doc.line_of("sources"),
                "sources",
                'e.g. sources: [{glob: "media/*.mp4"}]',
            )
        )
        return []
    out: list[Source] = []
    for i, item in enumerate(items):
        try:  # the sources an item yields before its problems are kept, so their jobs are checked too
            out.extend(_expand_item(item, i, items.line_of(i), ep, base, file, warnings))  # keeps what came
        except ManifestError as err:
            problems.add(err)
    return out


def _item_spec(item: Any, line: int, file: str, fld: str) -> LineDict:
    """A source item as a mapping: a bare string is a URL, a glob or a path by its look."""
    if isinstance(item, str):
        kind = "url" if is_remote(item) else "glob" if _GLOB_CHARS & set(item) else "path"  # s3://… too
        spec: LineDict = LineDict({kind: item})
        spec.line, spec.key_lines = line, {kind: line}
        return spec
    if isinstance(item, LineDict):
        reject_unknown_keys(item, SOURCE_KEYS, file, "a source")
        return item
    raise manifest_error("must be a path, glob, URL or a mapping", file, line, fld)


def _expand_item(
    item: Any, i: int, line: int, ep: catalog.Endpoint, base: Path, file: str, warnings: list[str]
) -> Iterator[Source]:
    origin = f"{file}:{line}"
    fld = f"sources[{i}]"
    spec = _item_spec(item, line, file, fld)
    kinds = [k for k in _KINDS if k in spec]
    if len(kinds) > 1:
        raise manifest_error(f"has both {kinds[0]} and {kinds[1]}; use one per source", file, line, fld)
    params, where = _item_params(spec, file, fld)
    tags = read_tags(spec.get("tags"), file, spec.line_of("tags"), f"{fld}.tags")
    name = spec.get("name")
    if name is not None and not isinstance(name, str):
        raise manifest_error("must be a string", file, spec.line_of("name"), f"{fld}.name")
    if not kinds:
        if ep.source_field and ep.field_map[ep.source_field].required:
            raise manifest_error(
                f"needs one of glob, path, url or rows ({ep.alias} takes a {ep.source_kind})", file, line, fld
            )
        yield Source(None, name or f"item{i + 1}", "", params, where, tags, origin)
        return
    kind = kinds[0]
    value = spec[kind]
    if not isinstance(value, str) or not value.strip():
        raise manifest_error("must be a non-empty string", file, spec.line_of(kind), f"{fld}.{kind}")
    if not ep.source_field and kind != "rows":
        raise manifest_error(f"{ep.alias} takes no media source; give prompts as params or rows", file, line, fld)
    if kind == "rows":
        rows_at = value if storage.is_store(value) else str(base / value)
        yield from _rows(
            rows_at, ep, file, spec.line_of(kind), Source(None, "", "", params, where, tags, origin), warnings
        )
    elif kind == "url" or (kind == "path" and storage.is_store(value)):
        if not is_remote(value) and not storage.is_store(value):
            raise manifest_error(
                "must start with http://, https:// or an object-store scheme such as s3://",
                file,
                spec.line_of(kind),
                f"{fld}.url",
            )
        yield Source(value, name or _stem(value), _ext(value), params, where, tags, origin)
    elif kind == "path":
        p = (base / value).resolve()
        yield Source(str(p), name or p.stem, p.suffix.lstrip("."), params, where, tags, origin)
    else:
        like = Source(None, "", "", params, where, tags, origin)
        yield from _glob(value, spec, base, file, fld, like, warnings)


def _glob(
    pattern: str, spec: LineDict, base: Path, file: str, fld: str, like: Source, warnings: list[str]
) -> Iterator[Source]:
    """Every file (or object) a glob matches, sorted; `like` carries the item's params, tags and origin."""
    if storage.is_store(pattern):
        try:
            urls = storage.glob(pattern)
        except storage.StoreError as exc:
            raise manifest_error(exc.message, file, spec.line_of("glob"), f"{fld}.glob", exc.user_hint) from None
        matches: list[Any] = [_StoreName(u) for u in urls]
    else:
        matches = sorted(
            Path(m).resolve() for m in globlib.glob(str(base / pattern), recursive=True) if Path(m).is_file()
        )
    if not matches:
        warnings.append(f"{like.origin}: glob {pattern!r} matches no files")
    name = spec.get("name")
    if name is not None and len(matches) > 1:
        raise manifest_error(
            "name only applies to a single source, not a glob", file, spec.line_of("name"), f"{fld}.name"
        )
    for m in matches:
        yield replace(like, source=str(m), stem=name or m.stem, ext=m.suffix.lstrip("."))


class _StoreName:
    """An object's URL with the stem and suffix a Path would give."""

    def __init__(self, url: str) -> None:
        self.url, last = url, posixpath.basename(url)
        self.stem, self.suffix = Path(last).stem, Path(last).suffix

    def __str__(self) -> str:
        return self.url


def _item_params(spec: LineDict, file: str, fld: str) -> tuple[dict[str, Any], dict[str, str]]:
    params = spec.get("params")
    if params is None:
        return {}, {}
    if not isinstance(params, LineDict):
        raise manifest_error("must be a mapping of input fields", file, spec.line_of("params"), f"{fld}.params")
    return dict(params), {k: f"{file}:{params.line_of(k)}" for k in params}


def _rows(
    rows_file: str, ep: catalog.Endpoint, file: str, line: int, like: Source, warnings: list[str]
) -> Iterator[Source]:
    """One source per row; every row's problems are noted before raising. `like` carries the item's
    params, tags and origin. A rows file may be an object (s3://…): its relative sources are keys beside it."""
    in_store = storage.is_store(rows_file)
    path = Path(posixpath.basename(rows_file)) if in_store else Path(rows_file)
    if not in_store and not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise manifest_error(f"rows file {rows_file} {what}", file, line, "rows", "paths are relative to the manifest")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise manifest_error(
            f"rows file must be .csv or .jsonl, got {shorten(path.name)}", file, line, "rows", "rename it or convert it"
        )
    if in_store:
        try:
            data = storage.read_bytes(rows_file)
        except storage.StoreError as exc:
            raise manifest_error(f"rows file {exc.message}", file, line, "rows", exc.user_hint) from None
        opened: Callable[[], IO[str]] = lambda: io.StringIO(data.decode("utf-8-sig"), newline="")  # noqa: E731
    else:
        opened = lambda: path.open(newline="", encoding="utf-8-sig")  # noqa: E731
    errors: list[ManifestError] = []
    count = 0
    for row_line, row in _read_rows(rows_file, opened, suffix):
        count += 1
        try:
            yield _row_source(rows_file, ep, row_line, row, suffix, like)
        except ManifestError as err:
            errors.append(err)
    raise_all(errors)
    if count == 0:
        warnings.append(f"{file}:{line}: rows file {rows_file} has no rows: 0 jobs from it")


def _row_source(
    rows_file: str, ep: catalog.Endpoint, row_line: int, row: dict[str, Any], suffix: str, like: Source
) -> Source:
    origin = f"{rows_file}:{row_line}"
    row = {k.strip(): v for k, v in row.items() if k is not None and v not in (None, "")}
    source = None
    for col in ("source", ep.source_field) if ep.source_field else ():
        if col in row:
            source = row.pop(col)
    row_tags = read_tags(row.pop("tags", None), rows_file, row_line, "tags")
    name = row.pop("name", None)
    if ep.source_field and source is None and ep.field_map[ep.source_field].required:
        raise manifest_error(
            f'has no "source" column value ({ep.alias} takes a {ep.source_kind})',
            rows_file,
            row_line,
            "source",
            f"fill in the source (or {ep.source_field}) column",
        )
    if source is not None and not isinstance(source, str):
        raise manifest_error(
            f"must be a path or URL string, got {type_name(source)}",
            rows_file,
            row_line,
            "source",
            "write it as a string",
        )
    row_params = {k: _coerce(ep, k, v, rows_file, row_line, suffix) for k, v in row.items()}
    merged, w = {**like.params, **row_params}, {**like.where, **dict.fromkeys(row_params, origin)}
    tags = like.tags + row_tags
    if source is None:
        return Source(None, str(name or f"row{row_line}"), "", merged, w, tags, origin)
    if storage.is_store(rows_file) and not is_remote(source) and not storage.is_store(source):
        source = storage.join(posixpath.dirname(rows_file), source)  # a key beside the rows object
    if is_remote(source) or storage.is_store(source):
        return Source(source, str(name or _stem(source)), _ext(source), merged, w, tags, origin)
    p = (Path(rows_file).parent / source).resolve()
    return Source(str(p), str(name or p.stem), p.suffix.lstrip("."), merged, w, tags, origin)


def _read_rows(path: str, opened: Callable[[], IO[str]], suffix: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The rows of a CSV (a UTF-8 BOM is allowed) or JSONL file with their line numbers."""
    try:
        with opened() as fh:
            if suffix == ".csv":
                yield from _csv_rows(path, fh)
                return
            for n, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise manifest_error(
                        f"not valid JSON: {exc.msg}", str(path), n, hint="one JSON object per line"
                    ) from None
                if not isinstance(obj, dict):
                    raise manifest_error(
                        f"each line must be a JSON object, got {type_name(obj)}",
                        str(path),
                        n,
                        hint='e.g. {"prompt": "a red fox"}',
                    )
                yield n, obj
    except UnicodeDecodeError as exc:
        raise manifest_error(
            f"is not UTF-8 text ({exc.reason} at byte {exc.start})", str(path), None, hint="save it as UTF-8"
        ) from exc
    except OSError as exc:
        raise manifest_error(f"cannot be read: {exc.strerror}", str(path), None, hint="check its permissions") from exc


def _csv_rows(path: str, fh: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(fh)
    try:
        header = reader.fieldnames
    except csv.Error as exc:
        raise manifest_error(f"not valid CSV: {exc}", str(path), 1, hint="check the quoting") from None
    if not header:
        raise manifest_error("CSV file has no header row", str(path), 1, hint="start with a header, e.g. source,prompt")
    names = [h.strip() for h in header]
    dupes = sorted({h for h in names if names.count(h) > 1})
    if dupes:
        raise manifest_error(
            f"the header names {shorten(dupes[0])} twice", str(path), 1, "header", "give each column its own name"
        )
    try:
        for row in reader:
            if None in row:
                raise manifest_error(
                    f"row has more cells ({len(header) + len(row[None])}) than the header ({len(header)})",
                    str(path),
                    reader.line_num,
                    hint="quote cells that contain commas",
                )
            yield reader.line_num, row
    except csv.Error as exc:
        raise manifest_error(f"not valid CSV: {exc}", str(path), reader.line_num, hint="check the quoting") from None


def _coerce(ep: catalog.Endpoint, name: str, value: Any, file: str, line: int, suffix: str) -> Any:
    """CSV cells are strings: convert them to the field's type (JSONL values are typed already)."""
    f = ep.field_map.get(name)
    if suffix != ".csv" or f is None or not isinstance(value, str):
        return value
    try:
        if f.type == "integer":
            return int(value)
        if f.type == "number":
            return float(value)
        if f.type == "boolean":
            low = value.strip().lower()
            if low in ("true", "yes", "1"):
                return True
            if low in ("false", "no", "0"):
                return False
            raise ValueError
        if f.type in ("object", "list"):
            return json.loads(value)
    except (ValueError, json.JSONDecodeError):
        raise manifest_error(
            f"cannot read {shorten(value)} as {type_name_of(f.type)}", file, line, name, _TYPE_HINTS.get(f.type)
        ) from None
    return value


_TYPE_HINTS = {
    "integer": "write a whole number, e.g. 3",
    "number": "write a number, e.g. 0.5",
    "boolean": "write true or false",
    "object": 'write JSON, e.g. {"x_norm": 0.1}',
    "list": 'write a JSON list, e.g. ["a.png"]',
}


def type_name_of(kind: str) -> str:
    return {"integer": "an integer", "object": "a JSON object", "list": "a JSON list"}.get(kind, f"a {kind}")


def _stem(url: str) -> str:
    last = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return Path(last).stem or "source"


def _ext(url: str) -> str:
    return Path(url.split("?", 1)[0]).suffix.lstrip(".")
