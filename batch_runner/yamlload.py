"""Load YAML safely, remembering the line of every mapping key and list item.

Two YAML 1.1 traps are closed here: `9:16` is a string, not the base-60 integer 556,
and a duplicated key is an error rather than a silent overwrite. Size is bounded too: the file
(MAX_BYTES) and what its aliases expand to (MAX_NODES), so a small file cannot explode in memory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ManifestError, shorten

#: The largest manifest read, in bytes (1 MiB): a manifest lists sources, it does not hold them.
MAX_BYTES = 1024 * 1024
#: The most values (mappings, lists, scalars) a document may expand to, counting every alias use.
MAX_NODES = 100_000


class LineDict(dict[str, Any]):
    """A dict that knows the 1-based line of each of its keys and of itself."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list[Any]):
    """A list that knows the 1-based line of each item and of itself."""

    line: int = 0
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class _Loader(yaml.SafeLoader):
    pass


# Drop the sexagesimal (base 60) int and float forms from the implicit resolvers.
_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"""^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$""", re.X),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            key = str(key)
        if key in out:
            raise ManifestError(
                f"key {shorten(key)} appears twice",
                file=loader.name,
                line=key_node.start_mark.line + 1,
                hint="remove one of them",
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(path: Path, *, display: str | None = None) -> Any:
    """Parse one YAML file into LineDict/LineList values; errors name file:line."""
    name = display or str(path)
    text = _read_text(path, name)
    try:
        loader = _Loader(text)  # the reader checks the characters here: a NUL byte fails now
    except yaml.YAMLError as exc:
        raise ManifestError(
            f"not valid YAML: {shorten(str(exc).splitlines()[-1], 120)}", file=name, hint="remove control characters"
        ) from exc
    loader.name = name
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, name)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ManifestError(
            f"not valid YAML: {shorten(exc.problem or exc.context, 120)}",
            file=name,
            line=mark.line + 1 if mark else None,
            hint="check indentation (spaces, not tabs) and quoting",
        ) from exc
    except yaml.YAMLError as exc:
        raise ManifestError(f"not valid YAML: {shorten(str(exc), 120)}", file=name, hint="check the syntax") from exc
    except RecursionError as exc:
        raise ManifestError(
            "nested too deeply or an alias refers to itself", file=name, hint="flatten the structure"
        ) from exc
    finally:
        loader.dispose()


def _read_text(path: Path, name: str) -> str:
    """The file's text, refusing folders, files over MAX_BYTES and anything that is not UTF-8."""
    try:
        if path.is_dir():
            raise ManifestError("is a folder, not a manifest file", file=name, hint="give the path of a .yaml file")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ManifestError(
                f"is {size} bytes, more than the {MAX_BYTES} (1 MiB) a manifest may be",
                file=name,
                hint="list sources with globs or a rows file instead of inline",
            )
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ManifestError("file not found", file=name, hint="check the path") from exc
    except PermissionError as exc:
        raise ManifestError(
            "cannot be read: permission denied", file=name, hint="check the file's permissions"
        ) from exc
    except OSError as exc:
        raise ManifestError(f"cannot be read: {exc.strerror}", file=name, hint="check the path") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError(
            f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            file=name,
            line=line,
            hint="save the file as UTF-8; a manifest is a YAML text file",
        ) from exc


def _check_expansion(root: yaml.Node, name: str) -> None:
    """Refuse a document whose aliases expand past MAX_NODES values ("billion laughs"): count each
    node once per use, memoised, so the check itself stays linear in the file."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise ManifestError(
                "an alias refers to itself",
                file=name,
                line=node.start_mark.line + 1,
                hint="an anchor cannot be used inside its own value",
            )
        open_.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        open_.discard(key)
        sizes[key] = min(total, MAX_NODES + 1)
        return sizes[key]

    if size(root) > MAX_NODES:
        raise ManifestError(
            f"expands to more than {MAX_NODES} values through its aliases (&anchor / *alias)",
            file=name,
            line=root.start_mark.line + 1,
            hint="use fewer nested aliases; write the values out or use a rows file",
        )
