"""Files written whole or not at all: a temporary file in the same folder, flushed to disk, then
one rename over the target (a reader sees the old file or the new one, never half of one)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


@contextmanager
def writing(path: Path) -> Iterator[TextIO]:
    """A text file to write piece by piece that replaces `path` only when the block ends without
    an error, creating its folder; OSError when it cannot (nothing is left behind, on any error)."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, creating its folder; OSError when it cannot (nothing is left behind)."""
    with writing(path) as fh:
        fh.write(text)
