"""Job manifests: YAML in, a list of unpriced JobSpecs out, every error at file:line.

A manifest names a batch and an endpoint, gives defaults, a matrix to sweep, sources
(globs, paths, URLs, CSV/JSONL rows), per-source overrides, an output template, tags and a
budget. Relative paths resolve against the manifest's folder. See README "Manifest format".
"""

from __future__ import annotations

import csv
import difflib
import fnmatch
import glob as globlib
import itertools
import json
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import catalog
from .domain import JobSpec, is_remote, usd_to_micro
from .errors import ManifestError
from .yamlload import LineDict, LineList, load_yaml

TOP_KEYS = (
    "batch",
    "endpoint",
    "defaults",
    "matrix",
    "sources",
    "overrides",
    "output",
    "output_root",
    "tags",
    "budget",
)
SOURCE_KEYS = ("glob", "path", "url", "rows", "name", "params", "tags")
BUDGET_KEYS = ("max_usd", "max_usd_per_day", "warn_at_usd")
BATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_GLOB_CHARS = set("*?[")


@dataclass
class Manifest:
    """A parsed manifest and its expanded jobs."""

    path: Path
    batch: str
    endpoint: catalog.Endpoint
    output_root: Path
    tags: tuple[str, ...]
    budget_micro_usd: int | None
    jobs: list[JobSpec]
    warnings: list[str] = field(default_factory=list)
    daily_budget_micro_usd: int | None = None  # per rolling 24 h, this batch
    warn_at_micro_usd: int | None = None


@dataclass
class _Source:
    """One concrete source before the matrix is applied."""

    source: str | None
    stem: str
    ext: str
    params: dict[str, Any]
    where: dict[str, str]  # param → file:line it came from
    tags: tuple[str, ...]
    origin: str


def _err(msg: str, file: str, line: int | None, fld: str | None = None, hint: str | None = None) -> ManifestError:
    return ManifestError(msg, file=file, line=line, field=fld, hint=hint)


def _unknown_keys(d: LineDict, allowed: tuple[str, ...], file: str, context: str) -> None:
    for key in d:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            raise _err(
                f"unknown key in {context}",
                file,
                d.line_of(key),
                key,
                f'did you mean "{close[0]}"?' if close else f"allowed: {', '.join(allowed)}",
            )


def load_manifest(path: Path) -> Manifest:
    """Parse and expand a manifest; raises ManifestError at the first problem."""
    path = Path(path)
    file = str(path)
    doc = load_yaml(path)
    if not isinstance(doc, LineDict):
        raise _err("a manifest is a YAML mapping (batch:, endpoint:, sources:, …)", file, 1)
    _unknown_keys(doc, TOP_KEYS, file, "the manifest")
    base = path.resolve().parent

    batch = _require_str(doc, "batch", file)
    if not BATCH_NAME.match(batch):
        raise _err(
            f'"{batch}" is not a valid batch name',
            file,
            doc.line_of("batch"),
            "batch",
            "use letters, digits, '.', '_' and '-'",
        )
    ep_name = _require_str(doc, "endpoint", file)
    try:
        ep = catalog.endpoint(ep_name)
    except KeyError:
        raise _err(
            f'unknown endpoint "{ep_name}"',
            file,
            doc.line_of("endpoint"),
            "endpoint",
            catalog.suggest_endpoint(ep_name),
        ) from None

    defaults = _mapping(doc, "defaults", file)
    matrix = _matrix(doc, file, defaults)
    overrides = _mapping(doc, "overrides", file)
    for pattern in overrides:
        if not isinstance(overrides[pattern], LineDict):
            raise _err(
                "an override maps a source pattern to parameters",
                file,
                overrides.line_of(pattern),
                f"overrides.{pattern}",
            )
    tags = _tags(doc.get("tags"), file, doc.line_of("tags"), "tags")
    budget, daily, warn_at = (_budget(doc, file, key) for key in BUDGET_KEYS)
    output_root = (base / _optional_str(doc, "output_root", file, "out")).resolve()
    template = _optional_str(doc, "output", file, _default_template(ep, matrix))
    template_line = doc.line_of("output")
    _check_template_fields(template, ep, matrix, file, template_line)

    warnings: list[str] = []
    sources = list(_sources(doc, ep, base, file, warnings))
    jobs: list[JobSpec] = []
    keys = list(matrix)
    combos = list(itertools.product(*(matrix[k] for k in keys))) or [()]
    for index, src in enumerate(sources, start=1):
        base_params = {**_located(defaults, file), **_overrides_for(src, overrides, file)}
        for name in base_params:
            if name in matrix:
                raise _err(
                    "is set for a source and also swept by matrix",
                    *_where(base_params[name][1]),
                    name,
                    f"remove it from the matrix (line {matrix.line_of(name)}) or from here",
                )
        for name in src.params:
            if name in matrix:
                raise _err(
                    "is set for a source and also swept by matrix",
                    *_where(src.where[name]),
                    name,
                    f"remove it from the matrix (line {matrix.line_of(name)}) or from the source",
                )
        merged = {k: v for k, (v, _) in base_params.items()}
        where = {k: w for k, (_, w) in base_params.items()}
        merged.update(src.params)
        where.update(src.where)
        for combo in combos:
            params = dict(merged)
            for k, v in zip(keys, combo, strict=True):
                params[k] = v
                where[k] = f"{file}:{matrix.line_of(k)}"
            if ep.source_field and src.source is not None:
                params[ep.source_field] = src.source
                where[ep.source_field] = src.origin
            _resolve_media(ep, params, base)
            _validate(ep, params, where, src.origin)
            full = ep.with_defaults(params)
            out = _render(template, full, src, batch, ep, index, output_root, file, template_line)
            jobs.append(
                JobSpec(
                    batch=batch,
                    endpoint=ep.id,
                    source=src.source,
                    media_field=ep.source_field,
                    params=full,
                    output=str(out),
                    output_root=str(output_root),
                    tags=tuple(dict.fromkeys(tags + src.tags)),
                    origin=src.origin,
                    extra_media={
                        k: v
                        for k, v in full.items()
                        if k in ep.media_fields and k != ep.source_field and isinstance(v, str) and not is_remote(v)
                    },
                )
            )
    _check_duplicate_outputs(jobs, template, file, template_line)
    return Manifest(path, batch, ep, output_root, tags, budget, jobs, warnings, daily, warn_at)


# --------------------------------------------------------------------------- top-level fields


def _require_str(doc: LineDict, key: str, file: str) -> str:
    if key not in doc:
        raise _err("is required", file, doc.line, key)
    value = doc[key]
    if not isinstance(value, str) or not value.strip():
        raise _err(f"must be a non-empty string, got {value!r}", file, doc.line_of(key), key)
    return value.strip()


def _optional_str(doc: LineDict, key: str, file: str, default: str) -> str:
    value = doc.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise _err(f"must be a non-empty string, got {value!r}", file, doc.line_of(key), key)
    return value


def _mapping(doc: LineDict, key: str, file: str) -> LineDict:
    value = doc.get(key)
    if value is None:
        empty = LineDict()
        empty.line, empty.key_lines = doc.line_of(key), {}
        return empty
    if not isinstance(value, LineDict):
        raise _err(f"must be a mapping, got {type(value).__name__}", file, doc.line_of(key), key)
    return value


def _matrix(doc: LineDict, file: str, defaults: LineDict) -> LineDict:
    matrix = _mapping(doc, "matrix", file)
    for name, values in matrix.items():
        if not isinstance(values, LineList) or not values:
            raise _err(
                "must be a non-empty list of values to sweep",
                file,
                matrix.line_of(name),
                f"matrix.{name}",
                f"e.g. {name}: [a, b]",
            )
        if len(set(map(json.dumps, values))) != len(values):
            raise _err("lists the same value twice", file, matrix.line_of(name), f"matrix.{name}")
        if name in defaults:
            raise _err(
                "is both in defaults and in matrix",
                file,
                matrix.line_of(name),
                f"matrix.{name}",
                f"remove it from defaults (line {defaults.line_of(name)})",
            )
    return matrix


def _tags(value: Any, file: str, line: int, fld: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = re.split(r"[;,]", value)
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise _err("must be a list of strings", file, line, fld)
    return tuple(t.strip() for t in value if t.strip())


def _budget(doc: LineDict, file: str, key: str) -> int | None:
    budget = doc.get("budget")
    if budget is None:
        return None
    if not isinstance(budget, LineDict):
        raise _err('must be a mapping, e.g. budget: {max_usd: "25.00"}', file, doc.line_of("budget"), "budget")
    _unknown_keys(budget, BUDGET_KEYS, file, "budget")
    if key not in budget:
        return None
    raw = budget[key]
    try:
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise ValueError
        micro = usd_to_micro(str(raw))
        if micro <= 0:
            raise ValueError
    except ValueError:
        raise _err(
            f"must be a positive USD amount, got {raw!r}",
            file,
            budget.line_of(key),
            f"budget.{key}",
            'write it as a quoted decimal, e.g. "25.00"',
        ) from None
    return micro


# --------------------------------------------------------------------------- sources


def _sources(doc: LineDict, ep: catalog.Endpoint, base: Path, file: str, warnings: list[str]) -> Iterator[_Source]:
    items = doc.get("sources")
    if items is None:
        raise _err("is required: a list of globs, paths, URLs or rows files", file, doc.line, "sources")
    if not isinstance(items, LineList) or not items:
        raise _err("must be a non-empty list", file, doc.line_of("sources"), "sources")
    for i, item in enumerate(items):
        line = items.line_of(i)
        origin = f"{file}:{line}"
        fld = f"sources[{i}]"
        if isinstance(item, str):
            kind = "url" if is_remote(item) else "glob" if _GLOB_CHARS & set(item) else "path"
            spec: LineDict = LineDict({kind: item})
            spec.line, spec.key_lines = line, {kind: line}
        elif isinstance(item, LineDict):
            spec = item
            _unknown_keys(spec, SOURCE_KEYS, file, "a source")
        else:
            raise _err("must be a path, glob, URL or a mapping", file, line, fld)
        kinds = [k for k in ("glob", "path", "url", "rows") if k in spec]
        if len(kinds) > 1:
            raise _err(f"has both {kinds[0]} and {kinds[1]}; use one per source", file, line, fld)
        params, where = _item_params(spec, ep, file, fld)
        tags = _tags(spec.get("tags"), file, spec.line_of("tags"), f"{fld}.tags")
        name = spec.get("name")
        if name is not None and not isinstance(name, str):
            raise _err("must be a string", file, spec.line_of("name"), f"{fld}.name")
        if not kinds:
            if ep.source_field and ep.field_map[ep.source_field].required:
                raise _err(
                    f"needs one of glob, path, url or rows ({ep.alias} takes a {ep.source_kind})", file, line, fld
                )
            yield _Source(None, name or f"item{i + 1}", "", params, where, tags, origin)
            continue
        kind = kinds[0]
        value = spec[kind]
        if not isinstance(value, str) or not value.strip():
            raise _err("must be a non-empty string", file, spec.line_of(kind), f"{fld}.{kind}")
        if not ep.source_field and kind != "rows":
            raise _err(f"{ep.alias} takes no media source; give prompts as params or rows", file, line, fld)
        if kind == "rows":
            yield from _rows(base / value, ep, file, spec.line_of(kind), params, where, tags)
            continue
        if kind == "url":
            if not is_remote(value):
                raise _err("must start with http:// or https://", file, spec.line_of(kind), f"{fld}.url")
            yield _Source(value, name or _stem(value), _ext(value), params, where, tags, origin)
        elif kind == "path":
            p = (base / value).resolve()
            yield _Source(str(p), name or p.stem, p.suffix.lstrip("."), params, where, tags, origin)
        else:
            matches = sorted(
                Path(m).resolve() for m in globlib.glob(str(base / value), recursive=True) if Path(m).is_file()
            )
            if not matches:
                warnings.append(f"{origin}: glob {value!r} matches no files")
            if name is not None and len(matches) > 1:
                raise _err(
                    "name only applies to a single source, not a glob", file, spec.line_of("name"), f"{fld}.name"
                )
            for m in matches:
                yield _Source(str(m), name or m.stem, m.suffix.lstrip("."), params, where, tags, origin)


def _item_params(spec: LineDict, ep: catalog.Endpoint, file: str, fld: str) -> tuple[dict[str, Any], dict[str, str]]:
    params = spec.get("params")
    if params is None:
        return {}, {}
    if not isinstance(params, LineDict):
        raise _err("must be a mapping of input fields", file, spec.line_of("params"), f"{fld}.params")
    return dict(params), {k: f"{file}:{params.line_of(k)}" for k in params}


def _rows(
    path: Path,
    ep: catalog.Endpoint,
    file: str,
    line: int,
    params: dict[str, Any],
    where: dict[str, str],
    tags: tuple[str, ...],
) -> Iterator[_Source]:
    rows_file = str(path)
    if not path.is_file():
        raise _err(f"rows file {rows_file} not found", file, line, "rows", "paths are relative to the manifest")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise _err(f"rows file must be .csv or .jsonl, got {path.name}", file, line, "rows")
    src_cols = ("source", ep.source_field) if ep.source_field else ()
    for row_line, row in _read_rows(path, suffix):
        origin = f"{rows_file}:{row_line}"
        row = {k.strip(): v for k, v in row.items() if k is not None and v not in (None, "")}
        source = None
        for col in src_cols:
            if col in row:
                source = row.pop(col)
        row_tags = _tags(row.pop("tags", None), rows_file, row_line, "tags")
        name = row.pop("name", None)
        if ep.source_field and source is None and ep.field_map[ep.source_field].required:
            raise _err(
                f'has no "source" column value ({ep.alias} takes a {ep.source_kind})', rows_file, row_line, "source"
            )
        if source is not None and not isinstance(source, str):
            raise _err("must be a path or URL string", rows_file, row_line, "source")
        row_params = {k: _coerce(ep, k, v, rows_file, row_line, suffix) for k, v in row.items()}
        merged, w = {**params, **row_params}, {**where, **dict.fromkeys(row_params, origin)}
        if source is None:
            yield _Source(None, str(name or f"row{row_line}"), "", merged, w, tags + row_tags, origin)
        elif is_remote(source):
            yield _Source(source, str(name or _stem(source)), _ext(source), merged, w, tags + row_tags, origin)
        else:
            p = (path.parent / source).resolve()
            yield _Source(str(p), str(name or p.stem), p.suffix.lstrip("."), merged, w, tags + row_tags, origin)


def _read_rows(path: Path, suffix: str) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            if suffix == ".csv":
                reader = csv.DictReader(fh)
                if not reader.fieldnames:
                    raise _err("CSV file has no header row", str(path), 1)
                for row in reader:
                    if None in row:
                        raise _err("row has more cells than the header", str(path), reader.line_num)
                    yield reader.line_num, row
                return
            for n, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise _err(f"not valid JSON: {exc.msg}", str(path), n, hint="one JSON object per line") from None
                if not isinstance(obj, dict):
                    raise _err("each line must be a JSON object", str(path), n)
                yield n, obj
    except UnicodeDecodeError as exc:
        raise _err(f"not UTF-8 text: {exc.reason}", str(path), None) from exc


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
        raise _err(f"cannot read {value!r} as a {f.type}", file, line, name) from None
    return value


def _stem(url: str) -> str:
    last = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return Path(last).stem or "source"


def _ext(url: str) -> str:
    return Path(url.split("?", 1)[0]).suffix.lstrip(".")


# --------------------------------------------------------------------------- params


def _located(d: LineDict, file: str) -> dict[str, tuple[Any, str]]:
    return {k: (v, f"{file}:{d.line_of(k)}") for k, v in d.items()}


def _overrides_for(src: _Source, overrides: LineDict, file: str) -> dict[str, tuple[Any, str]]:
    """Parameters of every override whose pattern matches the source (name, stem or path)."""
    out: dict[str, tuple[Any, str]] = {}
    if src.source is None:
        return out
    name = src.source.rsplit("/", 1)[-1]
    for pattern, params in overrides.items():
        if any(fnmatch.fnmatchcase(s, pattern) for s in (name, src.stem, src.source)):
            out.update({k: (v, f"{file}:{params.line_of(k)}") for k, v in params.items()})
    return out


def _where(loc: str) -> tuple[str, int | None]:
    file, _, line = loc.rpartition(":")
    return (file, int(line)) if line.isdigit() else (loc, None)


def _resolve_media(ep: catalog.Endpoint, params: dict[str, Any], base: Path) -> None:
    """Local media paths given as parameters resolve against the manifest's folder."""
    for name in ep.media_fields:
        value = params.get(name)
        if isinstance(value, str) and name != ep.source_field and not is_remote(value):
            params[name] = str((base / value).resolve())
        elif isinstance(value, list):
            params[name] = [str((base / v).resolve()) if isinstance(v, str) and not is_remote(v) else v for v in value]


def _validate(ep: catalog.Endpoint, params: dict[str, Any], where: dict[str, str], origin: str) -> None:
    issues = ep.validate(params)
    if issues:
        issue = issues[0]
        loc = where.get(issue.loc[0], origin)
        raise _err(issue.msg, *_where(loc), issue.field, issue.hint)


# --------------------------------------------------------------------------- output paths


def _default_template(ep: catalog.Endpoint, matrix: LineDict) -> str:
    parts = "".join(f"_{{{k}}}" for k in matrix)
    return "{batch}/{stem}" + parts + ".mp4"


_FIXED_VARS = ("batch", "stem", "ext", "index", "endpoint")


def _check_template_fields(template: str, ep: catalog.Endpoint, matrix: LineDict, file: str, line: int) -> None:
    known = (*_FIXED_VARS, *ep.field_map)
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise _err(f"bad template: {exc}", file, line, "output", "use {name} placeholders") from None
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise _err(
                f"unknown placeholder {{{name}}}",
                file,
                line,
                "output",
                f"did you mean {{{close[0]}}}?" if close else f"known: {', '.join(known)}",
            )


def _slug(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).replace(":", "x")
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-") or "_"


def _render(
    template: str,
    params: dict[str, Any],
    src: _Source,
    batch: str,
    ep: catalog.Endpoint,
    index: int,
    root: Path,
    file: str,
    line: int,
) -> Path:
    values = {k: _slug(v) for k, v in params.items() if not isinstance(v, (dict, list))}
    values.update(batch=batch, stem=_slug(src.stem), ext=src.ext, index=str(index), endpoint=ep.alias.replace("/", "-"))
    try:
        rendered = template.format_map(values)
    except KeyError as exc:
        raise _err(
            f"placeholder {{{exc.args[0]}}} has no value for {src.origin}",
            file,
            line,
            "output",
            f"set {exc.args[0]} in defaults or drop it from the template",
        ) from None
    out = (root / rendered).resolve()
    if not out.is_relative_to(root) or out == root:
        raise _err(
            f"output path {out} escapes the output root {root}",
            file,
            line,
            "output",
            "remove '..' and absolute paths from the template",
        )
    return out


def _check_duplicate_outputs(jobs: list[JobSpec], template: str, file: str, line: int) -> None:
    seen: dict[str, JobSpec] = {}
    for job in jobs:
        other = seen.get(job.output)
        if other is not None:
            raise _err(
                f"two jobs write {job.output} ({other.origin} and {job.origin})",
                file,
                line,
                "output",
                "add {stem} or the swept parameters to the output template",
            )
        seen[job.output] = job
