"""Output paths from a manifest's template: its placeholders, the rendering of one job's path
inside the output root, and the rule that no two jobs write the same file."""

from __future__ import annotations

import difflib
import os
import re
import string
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


_MEMO_TYPES = (str, int, bool)  # exact types whose equal values always slug alike (not floats: 0.0 and -0.0)


class OutputPaths:
    """One manifest's template rendered into each job's output inside the root: a resolved path, or
    for an object-store root a URL whose key stays under the root's prefix (no '..' out of it, no
    absolute key). Built once per manifest, it slugs each value and resolves each folder once: a
    100,000-job manifest's outputs share a few folders and repeat a few values."""

    def __init__(self, template: str, root: Path | str, file: str, line: int) -> None:
        self.template, self.root, self.file, self.line = template, root, file, line
        # the placeholders the template uses: the only values worth slugging
        self._names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        self._slugs: dict[tuple[type, Any], str] = {}
        self._folders: dict[str, tuple[str, bool]] = {}  # folder → its real path, and whether it exists
        root_s = str(root)
        self._inside = "/" if root_s == "/" else root_s + "/"  # what a path inside a local root starts with

    def _slug(self, value: Any) -> str:
        if type(value) not in _MEMO_TYPES:
            return slug(value)
        key = (type(value), value)
        done = self._slugs.get(key)
        if done is None:
            done = self._slugs[key] = slug(value)
        return done

    def render(self, params: dict[str, Any], src: Source, batch: str, ep: catalog.Endpoint, index: int) -> str:
        """The job's output; a ManifestError when a placeholder has no value or the path leaves the root."""
        values = {k: self._slug(v) for k, v in params.items() if k in self._names and not isinstance(v, (dict, list))}
        values.update(
            batch=batch, stem=self._slug(src.stem), ext=src.ext, index=str(index), endpoint=ep.alias.replace("/", "-")
        )
        try:
            rendered = self.template.format_map(values)
        except KeyError as exc:
            raise manifest_error(
                f"placeholder {{{exc.args[0]}}} has no value for {src.origin}",
                self.file,
                self.line,
                "output",
                f"set {exc.args[0]} in defaults or drop it from the template",
            ) from None
        root = self.root
        if isinstance(root, str):
            url = storage.contained_key(root, rendered)
            if url is None:
                raise manifest_error(
                    f"output key {shorten(rendered)} escapes the output root {shorten(root)}",
                    self.file,
                    self.line,
                    "output",
                    "remove '..' and leading '/' from the template",
                )
            return url
        out = self._resolve(root, rendered)
        if not out.startswith(self._inside) or out == str(root):  # Path.is_relative_to, on resolved paths
            raise manifest_error(
                f"output path {out} escapes the output root {root}",
                self.file,
                self.line,
                "output",
                "remove '..' and absolute paths from the template",
            )
        return out

    def _resolve(self, root: Path, rendered: str) -> str:
        """str((root / rendered).resolve()): the folder's real path (once per folder) and the name,
        unless the name is a relative step or itself a symlink (only an existing folder holds one)."""
        joined = os.path.join(root, rendered)
        folder, name = os.path.split(joined)
        if name in ("", ".", ".."):
            return str((root / rendered).resolve())
        known = self._folders.get(folder)
        if known is None:
            known = self._folders[folder] = (os.path.realpath(folder), os.path.isdir(folder))
        real, exists = known
        if exists and os.path.islink(joined):
            return str((root / rendered).resolve())
        return os.path.join(real, name)


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
