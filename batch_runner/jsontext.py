"""JSON text written piece by piece, exactly as `json.dumps(..., indent=2)` writes the whole: a
100,000-item list is encoded an item at a time, never held whole."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any


def list_pieces(items: Iterable[Any], outer: str, dumps: Callable[[Any], str], chunk: int = 1000) -> Iterator[str]:
    """A list as json.dumps(indent=2) writes it on a line indented by `outer`, `chunk` items to a
    piece; `dumps` encodes one item with indent=2 (and the caller's other options)."""
    inner, buf, n = outer + "  ", [], 0
    for n, item in enumerate(items, 1):
        buf.append(("[\n" if n == 1 else ",\n") + inner + dumps(item).replace("\n", "\n" + inner))
        if len(buf) >= chunk:
            yield "".join(buf)
            buf = []
    yield "".join(buf) + (f"\n{outer}]" if n else "[]")
