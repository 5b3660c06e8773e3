"""The human-readable text: names kept whole, and text for a pipe unwrapped and free of colour codes."""

from __future__ import annotations

from batch_runner import display
from batch_runner.reports import Line, Report

LONG = "fal-ai/luma-dream-machine/ray-2-flash/reframe-with-a-name-longer-than-any-terminal-is-wide" * 2


def _report(name: str) -> Report:
    line = Line(jobs=2, estimated=600_000, billed=600_000, delivered_us=10_000_000)
    line.outcomes["succeeded"] = 2
    return Report("endpoint", {name: line}, line, [])


def test_report_table_keeps_a_long_name_whole_on_one_line_in_a_pipe():
    lines = display.report_table(_report(LONG)).splitlines()
    [row] = [line for line in lines if line.startswith(LONG)]
    assert row.split()[1:] == ["2", "0.60", "0.60", "0.00", "0.00", "0.00", "10.0", "0.0600", "succeeded", "2"]
    assert lines[-1].split()[0] == "TOTAL"


def test_text_for_a_pipe_has_no_colour_codes_markup_or_trailing_spaces():
    out = display.report_table(_report("[bold]x[/bold] :smile:"))
    assert "\x1b" not in out and "[bold]x[/bold] :smile:" in out
    assert all(line == line.rstrip() for line in out.splitlines())


def test_schema_change_says_what_db_upgrade_did():
    assert display.schema_change("sqlite:///x.db", None, "0005") == "created the batch-runner schema in sqlite:///x.db"
    assert display.schema_change("sqlite:///x.db", "0004", "0005") == "migrated sqlite:///x.db from revision 0004"
    assert display.schema_change("sqlite:///x.db", "0005", "0005") is None
