"""Manifest sources: globs, paths, URLs and CSV/JSONL rows files expanded into concrete sources.

Also the small readers the manifest shares with them: an error at file:line, unknown keys with a
suggestion, tags. Relative paths resolve against the manifest's folder (rows: the rows file's).
"""

from __future__ import annotations

import csv
import difflib
import glob as globlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import catalog
from .domain import is_remote
from .errors import ManifestError
from .yamlload import LineDict, LineList

SOURCE_KEYS = ("glob", "path", "url", "rows", "name", "params", "tags")
_KINDS = ("glob", "path", "url", "rows")
_GLOB_CHARS = set("*?[")


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
    """Raise at the first key that is not allowed, suggesting the closest allowed one."""
    for key in d:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            raise manifest_error(
                f"unknown key in {context}",
                file,
                d.line_of(key),
                key,
                f'did you mean "{close[0]}"?' if close else f"allowed: {', '.join(allowed)}",
            )


def read_tags(value: Any, file: str, line: int, fld: str) -> tuple[str, ...]:
    """Tags as a list of strings, or one string separated by commas or semicolons."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = re.split(r"[;,]", value)
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise manifest_error("must be a list of strings", file, line, fld)
    return tuple(t.strip() for t in value if t.strip())


def expand_sources(doc: LineDict, ep: catalog.Endpoint, base: Path, file: str, warnings: list[str]) -> Iterator[Source]:
    """Every concrete source of the manifest's `sources:` list, in written order."""
    items = doc.get("sources")
    if items is None:
        raise manifest_error("is required: a list of globs, paths, URLs or rows files", file, doc.line, "sources")
    if not isinstance(items, LineList) or not items:
        raise manifest_error("must be a non-empty list", file, doc.line_of("sources"), "sources")
    for i, item in enumerate(items):
        yield from _expand_item(item, i, items.line_of(i), ep, base, file, warnings)


def _item_spec(item: Any, line: int, file: str, fld: str) -> LineDict:
    """A source item as a mapping: a bare string is a URL, a glob or a path by its look."""
    if isinstance(item, str):
        kind = "url" if is_remote(item) else "glob" if _GLOB_CHARS & set(item) else "path"
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
        yield from _rows(base / value, ep, file, spec.line_of(kind), params, where, tags)
    elif kind == "url":
        if not is_remote(value):
            raise manifest_error("must start with http:// or https://", file, spec.line_of(kind), f"{fld}.url")
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
    """Every file a glob matches, sorted; `like` carries the item's params, tags and origin."""
    matches = sorted(Path(m).resolve() for m in globlib.glob(str(base / pattern), recursive=True) if Path(m).is_file())
    if not matches:
        warnings.append(f"{like.origin}: glob {pattern!r} matches no files")
    name = spec.get("name")
    if name is not None and len(matches) > 1:
        raise manifest_error(
            "name only applies to a single source, not a glob", file, spec.line_of("name"), f"{fld}.name"
        )
    for m in matches:
        yield replace(like, source=str(m), stem=name or m.stem, ext=m.suffix.lstrip("."))


def _item_params(spec: LineDict, file: str, fld: str) -> tuple[dict[str, Any], dict[str, str]]:
    params = spec.get("params")
    if params is None:
        return {}, {}
    if not isinstance(params, LineDict):
        raise manifest_error("must be a mapping of input fields", file, spec.line_of("params"), f"{fld}.params")
    return dict(params), {k: f"{file}:{params.line_of(k)}" for k in params}


def _rows(
    path: Path,
    ep: catalog.Endpoint,
    file: str,
    line: int,
    params: dict[str, Any],
    where: dict[str, str],
    tags: tuple[str, ...],
) -> Iterator[Source]:
    rows_file = str(path)
    if not path.is_file():
        raise manifest_error(
            f"rows file {rows_file} not found", file, line, "rows", "paths are relative to the manifest"
        )
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise manifest_error(f"rows file must be .csv or .jsonl, got {path.name}", file, line, "rows")
    src_cols = ("source", ep.source_field) if ep.source_field else ()
    for row_line, row in _read_rows(path, suffix):
        origin = f"{rows_file}:{row_line}"
        row = {k.strip(): v for k, v in row.items() if k is not None and v not in (None, "")}
        source = None
        for col in src_cols:
            if col in row:
                source = row.pop(col)
        row_tags = read_tags(row.pop("tags", None), rows_file, row_line, "tags")
        name = row.pop("name", None)
        if ep.source_field and source is None and ep.field_map[ep.source_field].required:
            raise manifest_error(
                f'has no "source" column value ({ep.alias} takes a {ep.source_kind})', rows_file, row_line, "source"
            )
        if source is not None and not isinstance(source, str):
            raise manifest_error("must be a path or URL string", rows_file, row_line, "source")
        row_params = {k: _coerce(ep, k, v, rows_file, row_line, suffix) for k, v in row.items()}
        merged, w = {**params, **row_params}, {**where, **dict.fromkeys(row_params, origin)}
        if source is None:
            yield Source(None, str(name or f"row{row_line}"), "", merged, w, tags + row_tags, origin)
        elif is_remote(source):
            yield Source(source, str(name or _stem(source)), _ext(source), merged, w, tags + row_tags, origin)
        else:
            p = (path.parent / source).resolve()
            yield Source(str(p), str(name or p.stem), p.suffix.lstrip("."), merged, w, tags + row_tags, origin)


def _read_rows(path: Path, suffix: str) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            if suffix == ".csv":
                reader = csv.DictReader(fh)
                if not reader.fieldnames:
                    raise manifest_error("CSV file has no header row", str(path), 1)
                for row in reader:
                    if None in row:
                        raise manifest_error("row has more cells than the header", str(path), reader.line_num)
                    yield reader.line_num, row
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
                    raise manifest_error("each line must be a JSON object", str(path), n)
                yield n, obj
    except UnicodeDecodeError as exc:
        raise manifest_error(f"not UTF-8 text: {exc.reason}", str(path), None) from exc


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
        raise manifest_error(f"cannot read {value!r} as a {f.type}", file, line, name) from None
    return value


def _stem(url: str) -> str:
    last = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return Path(last).stem or "source"


def _ext(url: str) -> str:
    return Path(url.split("?", 1)[0]).suffix.lstrip(".")
