"""Commands about money: report, reconcile, prices sync."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import click

from .. import display
from ..config import ENV_FAL_PRICES
from .app import App, Group, cli, emit_json, exit_codes_help

# --------------------------------------------------------------------------- report


def _when(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    from datetime import datetime

    from ..timewindow import parse_when

    try:
        return parse_when(value, datetime.now(UTC))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


WHEN_HELP = "ISO date or time (UTC), an age (90m, 24h, 7d) or today/yesterday"


@cli.command(epilog=exit_codes_help(3, 6))
@click.option("--batch", "batches", multiple=True, help="Only this batch (repeatable; a missing batch exits 3).")
@click.option("--project", "projects", multiple=True, help="Only jobs of this manifest project (repeatable).")
@click.option("--tag", "tags", multiple=True, help="Only jobs with this tag (repeatable: any of them).")
@click.option("--since", callback=_when, metavar="WHEN", help=f"Attempts from WHEN: {WHEN_HELP}.")
@click.option("--until", callback=_when, metavar="WHEN", help="Attempts before WHEN (exclusive), same forms.")
@click.option(
    "--group-by",
    type=click.Choice(["endpoint", "resolution", "tag", "project", "day", "batch"]),
    default="endpoint",
    show_default=True,
)
@click.option(
    "--items",
    is_flag=True,
    help="Line items: one row per attempt (and per job never tried), totals apart; CSV [default] or JSON.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "html"]),
    help="html: one self-contained page with charts and a contact sheet [default: table].",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE, not stdout.")
@click.pass_obj
def report(
    app: App,
    batches: tuple[str, ...],
    projects: tuple[str, ...],
    tags: tuple[str, ...],
    since: Any,
    until: Any,
    group_by: str,
    items: bool,
    fmt: str | None,
    output: Path | None,
) -> None:
    """What it cost and produced: estimated vs billed, outcomes, delivered seconds, waste, money at risk."""
    from .. import reports
    from ..db.ledger import Scope

    if items and fmt in ("table", "html"):
        raise click.UsageError("--items is CSV or JSON: use --format csv or --format json")
    fmt = fmt or ("csv" if items else "table")
    scope = Scope(tuple(batches), tuple(projects), tuple(tags), since, until)
    if items:  # streamed: 100,000 jobs make 100,000 lines, never held together
        from ..line_items import line_items

        pieces = line_items(app.repo, scope, fmt)
        if output is None:
            for piece in pieces:
                click.echo(piece, nl=False)
            return
        _write(output, pieces)
        return
    if fmt == "html":
        from ..report_html import MAX_CARDS, render_html

        built = reports.build(app.repo, scope, group_by=group_by, cards=MAX_CARDS)
        text = render_html(built, base=output.parent if output else Path.cwd())
    else:
        built = reports.build(app.repo, scope, group_by=group_by)
        text = display.report_table(built, wrap=output is None) + "\n" if fmt == "table" else reports.render(built, fmt)
    if output is None:
        click.echo(text, nl=False)
        return
    _write(output, text)


def _write(output: Path, text: str | Iterator[str]) -> None:
    from .. import reports

    reports.write_atomically(output, text)
    click.echo(display.wrote(output), err=True)


@cli.command(epilog=exit_codes_help(3, 6, 9, 10))
@click.option(
    "--since",
    callback=_when,
    metavar="WHEN",
    help=f"From WHEN ({WHEN_HELP}), widened to its midnight [default: 24 h ago].",
)
@click.option(
    "--until",
    callback=_when,
    metavar="WHEN",
    help="Up to WHEN (same forms), widened to the next midnight [default: now].",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def reconcile(app: App, since: Any, until: Any, as_json: bool) -> None:
    """Compare our ledger with fal's usage API per endpoint and whole UTC day (exit 10 when they differ).

    Needs an ADMIN key (FAL_ADMIN_KEY, else FAL_KEY). The window is widened to whole UTC days on
    both sides. Price drift is judged by fal's own numbers: its pricing API against the last
    `prices sync`, and against the price it billed; a unit batch-runner cannot map is only a note.
    """
    from .. import reconcile as rec_module
    from ..errors import ReconcileMismatchError

    result = rec_module.reconcile_with_fal(app.settings, lambda: app.repo, app.prices, since, until)
    click.echo(json.dumps(result.as_dict(), indent=2) if as_json else display.reconciliation(result))
    if not result.clean:
        raise ReconcileMismatchError(
            f"{len(result.differences)} difference(s) and {len(result.drift)} price "
            "drift(s) between our ledger and fal's usage",
            hint="see the lines above",
        )


# --------------------------------------------------------------------------- prices


@cli.group(cls=Group)
def prices() -> None:
    """fal's own prices: sync them from fal's pricing API for plans and budgets."""


@prices.command("sync", epilog=exit_codes_help(3, 9))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=ENV_FAL_PRICES,
    show_envvar=True,
    help="Write the prices here [default: fal-prices.json beside the default database].",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def prices_sync(app: App, output: Path | None, as_json: bool) -> None:
    """Read fal's pricing API for every catalog endpoint into a dated local price file.

    `plan` and the budgets then use the higher of the price table and these prices; `reconcile`
    reports when fal's prices move away from them. Nothing is written when the call fails.
    """
    from ..price_sync import sync_with_fal

    path = output or app.settings.fal_prices_path
    assert path is not None
    report = sync_with_fal(app.settings, app.prices, path)
    if as_json:
        emit_json(report.as_dict())
        return
    click.echo(display.prices_synced(report, path))
