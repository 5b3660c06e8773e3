"""Output paths from a manifest's template: its placeholders, the rendering of one job's path
inside the output root, and the rule that no two jobs write the same file."""

from __future__ import annotations

import difflib
import os
import re
import string
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from . import catalog, storage
from .domain import JobSpec
from .errors import shorten
from .sources import Source, manifest_error
from .yamlload import LineDict


def default_template(ep: catalog.Endpoint, matrix: LineDict) -> str:
    parts = "".join(f"_{{{k}}}" for k in matrix)
    return "{batch}/{stem}" + parts + ".mp4"


FIXED_VARS = ("batch", "stem", "ext", "index", "endpoint")


def check_template_fields(template: str, ep: catalog.Endpoint, matrix: LineDict, file: str, line: int) -> None:
    known = (*FIXED_VARS, *ep.field_map)
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise manifest_error(f"bad template: {exc}", file, line, "output", "use {name} placeholders") from None
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise manifest_error(
                f"unknown placeholder {{{shorten(name, 40)}}}",
                file,
                line,
                "output",
                f"did you mean {{{close[0]}}}?" if close else f"known: {', '.join(known)}",
            )


def slug(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).replace(":", "x")
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-") or "_"


def render(
    template: str,
    params: dict[str, Any],
    src: Source,
    batch: str,
    ep: catalog.Endpoint,
    index: int,
    root: Path | str,
    file: str,
    line: int,
) -> Path | str:
    """The job's output inside the root: a resolved path, or for an object-store root a URL whose
    key stays under the root's prefix (no '..' out of it, no absolute key)."""
    values = {k: slug(v) for k, v in params.items() if not isinstance(v, (dict, list))}
    values.update(batch=batch, stem=slug(src.stem), ext=src.ext, index=str(index), endpoint=ep.alias.replace("/", "-"))
    try:
        rendered = template.format_map(values)
    except KeyError as exc:
        raise manifest_error(
            f"placeholder {{{exc.args[0]}}} has no value for {src.origin}",
            file,
            line,
            "output",
            f"set {exc.args[0]} in defaults or drop it from the template",
        ) from None
    if isinstance(root, str):
        url = storage.contained_key(root, rendered)
        if url is None:
            raise manifest_error(
                f"output key {shorten(rendered)} escapes the output root {shorten(root)}",
                file,
                line,
                "output",
                "remove '..' and leading '/' from the template",
            )
        return url
    out = _resolve(root, rendered)
    if not out.is_relative_to(root) or out == root:
        raise manifest_error(
            f"output path {out} escapes the output root {root}",
            file,
            line,
            "output",
            "remove '..' and absolute paths from the template",
        )
    return out


_FOLDERS: ContextVar[dict[str, str] | None] = ContextVar("_FOLDERS", default=None)


@contextmanager
def folders_resolved_once() -> Iterator[None]:
    """Within it, `render` resolves each output folder once: a 100,000-job manifest's outputs
    share a few folders, and resolving every path costs several lstat calls each."""
    token = _FOLDERS.set({})
    try:
        yield
    finally:
        _FOLDERS.reset(token)


def _resolve(root: Path, rendered: str) -> Path:
    """(root / rendered).resolve(): the folder's real path (once, within `folders_resolved_once`)
    and the name, unless the name is itself a symlink or a relative step."""
    cache = _FOLDERS.get()
    joined = os.path.join(root, rendered)
    folder, name = os.path.split(joined)
    if cache is None or name in ("", ".", "..") or os.path.islink(joined):
        return (root / rendered).resolve()
    real = cache.get(folder)
    if real is None:
        real = cache[folder] = os.path.realpath(folder)
    return Path(real, name)


def check_duplicate_outputs(jobs: list[JobSpec], template: str, file: str, line: int) -> None:
    seen: dict[str, JobSpec] = {}
    for job in jobs:
        other = seen.get(job.output)
        if other is not None:
            raise manifest_error(
                f"two jobs write {job.output} ({other.origin} and {job.origin})",
                file,
                line,
                "output",
                "add {stem} or the swept parameters to the output template",
            )
        seen[job.output] = job
