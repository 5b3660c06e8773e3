"""Job manifests: YAML in, a list of unpriced JobSpecs out, every error at file:line.

A manifest names a batch and an endpoint, gives defaults, a matrix to sweep, sources
(globs, paths, URLs, CSV/JSONL rows), per-source overrides, an output template, tags and a
budget. Relative paths resolve against the manifest's folder. See README "Manifest format".
The sources themselves are expanded in sources.py; this module reads the rest and sweeps.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import catalog, outpaths, storage
from .domain import JobSpec, is_remote, usd_to_micro
from .errors import ManifestError, shorten, type_name
from .sources import Problems, Source, expand_sources, manifest_error, raise_all, read_tags, reject_unknown_keys
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
    "project",
)
BUDGET_KEYS = ("max_usd", "max_usd_per_day", "warn_at_usd")
BATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


@dataclass
class Manifest:
    """A parsed manifest and its expanded jobs."""

    path: Path
    batch: str
    endpoint: catalog.Endpoint
    output_root: Path | str  # a folder, or an object-store URL such as s3://bucket/prefix
    tags: tuple[str, ...]
    budget_micro_usd: int | None
    jobs: list[JobSpec]
    warnings: list[str] = field(default_factory=list)
    daily_budget_micro_usd: int | None = None  # per rolling 24 h, this batch
    warn_at_micro_usd: int | None = None


@dataclass(frozen=True)
class _Expansion:
    """What every job of a manifest shares: read once from the document, applied to each source."""

    file: str
    base: Path  # the manifest's folder
    batch: str
    ep: catalog.Endpoint
    defaults: LineDict
    matrix: LineDict
    overrides: LineDict
    tags: tuple[str, ...]
    output_root: Path | str
    template: str
    template_line: int


def load_manifest(path: Path) -> Manifest:
    """Parse and expand a manifest; raises ManifestError with every problem found (up to a limit)."""
    path = Path(path)
    file = str(path)
    doc = load_yaml(path)
    if not isinstance(doc, LineDict):
        raise manifest_error(
            f"a manifest is a YAML mapping (batch:, endpoint:, sources:, …), got {type_name(doc)}",
            file,
            1,
            hint="start with `batch: NAME` and `endpoint: ALIAS` lines",
        )
    problems = Problems()
    problems.attempt(reject_unknown_keys, doc, TOP_KEYS, file, "the manifest")
    base = path.resolve().parent
    batch = problems.attempt(_batch_name, doc, file)
    ep = problems.attempt(_endpoint, doc, file)
    defaults = problems.attempt(_mapping, doc, "defaults", file)
    matrix = problems.attempt(_matrix, doc, file, defaults) if defaults is not None else None
    overrides = problems.attempt(_overrides, doc, file)
    tags = problems.attempt(read_tags, doc.get("tags"), file, doc.line_of("tags"), "tags")
    budget, daily, warn_at = (problems.attempt(_budget, doc, file, key) for key in BUDGET_KEYS)
    output_root = problems.attempt(_output_root, doc, file, base)
    template = problems.attempt(_optional_str, doc, "output", file, "")
    template_line = doc.line_of("output")
    if ep is not None and matrix is not None:
        template = template or outpaths.default_template(ep, matrix)
        problems.attempt(outpaths.check_template_fields, template, ep, matrix, file, template_line)
    warnings: list[str] = []
    top_problems = len(problems.errors) or ep is None
    sources = expand_sources(doc, ep, base, file, warnings, problems) if ep is not None else []
    jobs: list[JobSpec] | None = None
    if not top_problems:
        assert ep and batch and defaults is not None and matrix is not None and overrides is not None
        assert tags is not None and output_root is not None and template
        # the jobs of the sources that could be read are checked too, so one pass shows everything
        x = _Expansion(file, base, batch, ep, defaults, matrix, overrides, tags, output_root, template, template_line)
        jobs = problems.attempt(_jobs, x, sources)
        if jobs is not None and not problems.errors:
            problems.attempt(outpaths.check_duplicate_outputs, jobs, template, file, template_line)
    project = problems.attempt(_project, doc, file)
    problems.raise_any()
    assert ep is not None and batch and tags is not None and output_root is not None and jobs is not None
    if project is not None:
        jobs = [dataclasses.replace(j, project=project) for j in jobs]
    return Manifest(path, batch, ep, output_root, tags, budget, jobs, warnings, daily, warn_at)


def _output_root(doc: LineDict, file: str, base: Path) -> Path | str:
    """output_root, resolved; a file in its place, a folder that cannot be written or a missing bucket
    is an error now, before any money is spent on jobs whose results would have nowhere to go."""
    given = _optional_str(doc, "output_root", file, "out")
    line = doc.line_of("output_root")
    if storage.is_store(given):
        try:
            storage.check_writable_root(given)
        except storage.StoreError as exc:
            raise manifest_error(exc.message, file, line, "output_root", exc.user_hint) from None
        return given.rstrip("/")
    root = (base / given).resolve()
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise manifest_error(
            f"{shorten(str(probe))} is a file, not a folder", file, line, "output_root", "point output_root at a folder"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise manifest_error(
            f"cannot write to {shorten(str(probe))}", file, line, "output_root", "choose a folder you can write to"
        )
    return root


def _jobs(x: _Expansion, sources: list[Source]) -> list[JobSpec]:
    """Every source × every combination of the matrix, in written order."""
    keys = list(x.matrix)
    combos = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(x.matrix[k] for k in keys))]
    swept_at = {k: f"{x.file}:{x.matrix.line_of(k)}" for k in keys}  # where each swept value is set
    paths = outpaths.OutputPaths(x.template, x.output_root, x.file, x.template_line)
    memo: catalog.CheckMemo = {}
    jobs: list[JobSpec] = []
    problems = Problems()
    for index, src in enumerate(sources, start=1):
        located = problems.attempt(_source_params, x, src)
        if located is None:
            continue
        params, where = located
        where.update(swept_at)
        tags = tuple(dict.fromkeys(x.tags + src.tags))
        for combo in combos or [{}]:
            job = problems.attempt(_job, x, src, index, params, where, combo, paths, memo, tags)
            if job is not None:
                jobs.append(job)
    problems.raise_any()
    return jobs


def _source_params(x: _Expansion, src: Source) -> tuple[dict[str, Any], dict[str, str]]:
    """A source's parameters before the sweep (defaults, matching overrides, its own) and where
    each was set; none of them may also be swept by the matrix."""
    base_params = {**_located(x.defaults, x.file), **_overrides_for(src, x.overrides, x.file)}
    for name in base_params:
        if name in x.matrix:
            raise manifest_error(
                "is set for a source and also swept by matrix",
                *_where(base_params[name][1]),
                name,
                f"remove it from the matrix (line {x.matrix.line_of(name)}) or from here",
            )
    for name in src.params:
        if name in x.matrix:
            raise manifest_error(
                "is set for a source and also swept by matrix",
                *_where(src.where[name]),
                name,
                f"remove it from the matrix (line {x.matrix.line_of(name)}) or from the source",
            )
    params = {k: v for k, (v, _) in base_params.items()}
    where = {k: w for k, (_, w) in base_params.items()}
    params.update(src.params)
    where.update(src.where)
    return params, where


def _job(
    x: _Expansion,
    src: Source,
    index: int,
    merged: dict[str, Any],
    where: dict[str, str],
    combo: dict[str, Any],
    paths: outpaths.OutputPaths,
    memo: catalog.CheckMemo,
    tags: tuple[str, ...],
) -> JobSpec:
    """One job: the source's parameters with one combination of the matrix, validated and placed.
    `where` says where each parameter was set, the swept ones included."""
    ep = x.ep
    params = {**merged, **combo}
    if ep.source_field and src.source is not None:
        params[ep.source_field] = src.source
        where = {**where, ep.source_field: src.origin}
    _resolve_media(ep, params, x.base)
    _validate(ep, params, where, src.origin, memo)
    full = ep.with_defaults(params)
    return JobSpec(
        batch=x.batch,
        endpoint=ep.id,
        source=src.source,
        media_field=ep.source_field,
        params=full,
        output=paths.render(full, src, x.batch, ep, index),
        output_root=str(x.output_root),
        tags=tags,
        origin=src.origin,
        extra_media={
            k: v
            for k, v in full.items()
            if k in ep.media_fields and k != ep.source_field and isinstance(v, str) and not _elsewhere(v)
        },
    )


# --------------------------------------------------------------------------- top-level fields


def _require_str(doc: LineDict, key: str, file: str) -> str:
    if key not in doc:
        raise manifest_error("is required", file, doc.line, key, f"add a line `{key}: {_EXAMPLES[key]}`")
    value = doc[key]
    if not isinstance(value, str) or not value.strip():
        raise manifest_error(
            f"must be a non-empty string, got {_got(value)}",
            file,
            doc.line_of(key),
            key,
            f"e.g. {key}: {_EXAMPLES[key]}",
        )
    return value.strip()


_EXAMPLES = {"batch": "nightly-reframe", "endpoint": "ray-3.2/reframe", "project": "marketing-q3"}


def _got(value: Any) -> str:
    """What a wrong value was, for a message: its kind, and the value itself when it is short."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return f"{type_name(value)} {shorten(value)}"
    return type_name(value)


def _batch_name(doc: LineDict, file: str) -> str:
    batch = _require_str(doc, "batch", file)
    if not BATCH_NAME.match(batch):
        raise manifest_error(
            f"{shorten(batch)} is not a valid batch name",
            file,
            doc.line_of("batch"),
            "batch",
            "use letters, digits, '.', '_' and '-' (at most 200)",
        )
    return batch


def _endpoint(doc: LineDict, file: str) -> catalog.Endpoint:
    ep_name = _require_str(doc, "endpoint", file)
    try:
        return catalog.endpoint(ep_name)
    except KeyError:
        raise manifest_error(
            f"unknown endpoint {shorten(ep_name)}",
            file,
            doc.line_of("endpoint"),
            "endpoint",
            catalog.suggest_endpoint(ep_name),
        ) from None


def _overrides(doc: LineDict, file: str) -> LineDict:
    overrides = _mapping(doc, "overrides", file)
    for pattern in overrides:
        if not isinstance(overrides[pattern], LineDict):
            raise manifest_error(
                f"an override maps a source pattern to parameters, got {type_name(overrides[pattern])}",
                file,
                overrides.line_of(pattern),
                f"overrides.{shorten(pattern, 40)}",
                'e.g. overrides: {"clip01*": {prompt: "…"}}',
            )
    return overrides


def _project(doc: LineDict, file: str) -> str | None:
    """The optional cost centre (`project:`), a short name like a batch's; put on every job."""
    if "project" not in doc:
        return None
    project = _require_str(doc, "project", file)
    if not BATCH_NAME.match(project) or len(project) > 100:
        shown = project if len(project) <= 40 else project[:40] + "…"
        raise manifest_error(
            f'"{shown}" is not a valid project name',
            file,
            doc.line_of("project"),
            "project",
            "use up to 100 letters, digits, '.', '_' and '-'",
        )
    return project


def _optional_str(doc: LineDict, key: str, file: str, default: str) -> str:
    value = doc.get(key, default)
    if key in doc and (not isinstance(value, str) or not value.strip()):
        raise manifest_error(
            f"must be a non-empty string, got {_got(value)}", file, doc.line_of(key), key, "quote it, or leave it out"
        )
    return str(value)


def _mapping(doc: LineDict, key: str, file: str) -> LineDict:
    value = doc.get(key)
    if value is None:
        empty = LineDict()
        empty.line, empty.key_lines = doc.line_of(key), {}
        return empty
    if not isinstance(value, LineDict):
        raise manifest_error(
            f"must be a mapping, got {type_name(value)}",
            file,
            doc.line_of(key),
            key,
            f"e.g. {key}: {{resolution: 720p}}",
        )
    return value


def _matrix(doc: LineDict, file: str, defaults: LineDict) -> LineDict:
    matrix = _mapping(doc, "matrix", file)
    for name, values in matrix.items():
        if not isinstance(values, LineList) or not values:
            raise manifest_error(
                "must be a non-empty list of values to sweep",
                file,
                matrix.line_of(name),
                f"matrix.{name}",
                f"e.g. {name}: [a, b]",
            )
        if len(set(map(json.dumps, values))) != len(values):
            raise manifest_error(
                "lists the same value twice", file, matrix.line_of(name), f"matrix.{name}", "list each value once"
            )
        if name in defaults:
            raise manifest_error(
                "is both in defaults and in matrix",
                file,
                matrix.line_of(name),
                f"matrix.{name}",
                f"remove it from defaults (line {defaults.line_of(name)})",
            )
    return matrix


def _budget(doc: LineDict, file: str, key: str) -> int | None:
    budget = doc.get("budget")
    if budget is None:
        return None
    if not isinstance(budget, LineDict):
        raise manifest_error(
            'must be a mapping, e.g. budget: {max_usd: "25.00"}', file, doc.line_of("budget"), "budget"
        )
    reject_unknown_keys(budget, BUDGET_KEYS, file, "budget")
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
        raise manifest_error(
            f"must be a positive USD amount, got {_got(raw)}",
            file,
            budget.line_of(key),
            f"budget.{key}",
            'write it as a quoted decimal, e.g. "25.00"',
        ) from None
    return micro


# --------------------------------------------------------------------------- params


def _located(d: LineDict, file: str) -> dict[str, tuple[Any, str]]:
    return {k: (v, f"{file}:{d.line_of(k)}") for k, v in d.items()}


def _overrides_for(src: Source, overrides: LineDict, file: str) -> dict[str, tuple[Any, str]]:
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
        if isinstance(value, str) and name != ep.source_field and not _elsewhere(value):
            params[name] = str((base / value).resolve())
        elif isinstance(value, list):
            params[name] = [str((base / v).resolve()) if isinstance(v, str) and not _elsewhere(v) else v for v in value]


def _elsewhere(value: str) -> bool:
    """A URL or an object-store URL: not a path relative to the manifest."""
    return is_remote(value) or storage.is_store(value)


def _validate(
    ep: catalog.Endpoint, params: dict[str, Any], where: dict[str, str], origin: str, memo: catalog.CheckMemo
) -> None:
    """Every problem of one job's input, each at the file:line its field was set."""
    errors: list[ManifestError] = []
    for issue in ep.validate(params, memo=memo):
        loc = where.get(issue.loc[0], origin)
        errors.append(manifest_error(issue.msg, *_where(loc), issue.field, issue.hint))
    raise_all(errors)
