"""An unwrapped table of plaintable.PLAIN_ROWS rows or more is laid out without rich: the text must
be exactly rich's, whatever the cells (wide characters, spaces at either end, empty cells and
columns, right-aligned columns, with and without a header)."""

from __future__ import annotations

import random

import pytest

from batch_runner import display, plaintable

CHARS = "abcXYZ0189 ._/-$*é中  "


def _random_table(rng: random.Random) -> object:
    header = rng.random() < 0.6
    columns = [
        rng.choice(["", ">"]) + "".join(rng.choices(CHARS, k=rng.randint(0, 8))) for _ in range(rng.randint(1, 6))
    ]
    table = display._table(*columns, header=header, gap=rng.choice([1, 2]))
    for _ in range(plaintable.PLAIN_ROWS + rng.randint(0, 3)):
        table.add_row(*["".join(rng.choices(CHARS, k=rng.randint(0, 12))) for _ in columns])
    return table


@pytest.mark.parametrize("seed", range(40))
def test_plain_layout_is_richs_text(seed, monkeypatch):
    table = _random_table(random.Random(seed))
    plain = display.text(["head", (2, table)], wrap=False)  # type: ignore[list-item]
    monkeypatch.setattr(plaintable, "PLAIN_ROWS", 10**9)
    assert plain == display.text(["head", (2, table)], wrap=False)  # type: ignore[list-item]


def test_a_multi_line_cell_goes_through_rich():
    table = display._table("a", "b")
    for i in range(plaintable.PLAIN_ROWS):
        table.add_row(str(i), "two\nlines" if i == 7 else "x")
    assert "\nlines" not in display.text([table], wrap=False)  # rich folds it into its own row
    assert "two" in display.text([table], wrap=False)
