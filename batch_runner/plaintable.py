"""Unwrapped tables laid out line by line: `display.text` sends an unwrapped table this long
here instead of through rich, which takes seconds to lay out 100,000 rows. The text is rich's."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table

PLAIN_ROWS = 200  # an unwrapped table this long is laid out here, not by rich (seconds at 100,000 rows)


def plain_cells(table: Table) -> bool:
    """Every cell is a one-line printable string (what `lines` lays out as rich would)."""
    return all(isinstance(c, str) and c.isprintable() for col in table.columns for c in [col.header, *col.cells])


def lines(table: Table) -> Iterator[str]:
    """An unwrapped `display._table` laid out line by line exactly as rich prints it (checked
    against rich in tests/unit/test_display_plain.py): each column as wide as its widest cell,
    the padding after every column but the last, a space between columns and a rule under the
    header (with a header), no trailing spaces."""
    cols = table.columns
    cells = [[str(c) for c in col.cells] for col in cols]
    heads = [str(col.header) for col in cols] if table.show_header else None
    widths = [max(map(_cell_len, [*cs, *(heads[i : i + 1] if heads else [])]), default=0) for i, cs in enumerate(cells)]
    gap = " " * table.padding[1] + (" " if table.show_header else "")
    right = [col.justify == "right" for col in cols]

    def line(values: Sequence[str]) -> str:
        return gap.join(
            " " * (w - _cell_len(v.rstrip())) + v.rstrip() if r else v + " " * (w - _cell_len(v))
            for v, w, r in zip(values, widths, right, strict=True)
        ).rstrip()

    if heads is not None:
        yield line(heads)
        yield "─" * (sum(widths) + len(gap) * (len(cols) - 1))
    for row in zip(*cells, strict=True):
        yield line(row)


def _cell_len(value: str) -> int:
    if value.isascii():
        return len(value)
    from rich.cells import cell_len

    return cell_len(value)
