"""Commands about money: report, reconcile, prices sync."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path
from typing import Any

import click

from .. import display
from ..config import ENV_FAL_PRICES, Secret
from ..errors import ConfigError
from .app import App, Group, cli, emit_json, exit_codes_help

# --------------------------------------------------------------------------- report


def _when(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    from datetime import datetime

    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date or time, e.g. 2026-11-20 or 2026-11-20T18:00Z"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@cli.command(epilog=exit_codes_help(3, 6))
@click.option("--batch", "batches", multiple=True, help="Only this batch (repeatable).")
@click.option("--since", callback=_when, metavar="WHEN", help="From this UTC date or time (ISO 8601).")
@click.option("--until", callback=_when, metavar="WHEN", help="Up to this UTC date or time (exclusive).")
@click.option(
    "--group-by",
    type=click.Choice(["endpoint", "resolution", "tag", "day", "batch"]),
    default="endpoint",
    show_default=True,
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "html"]),
    default="table",
    show_default=True,
    help="html: one self-contained page with charts and a contact sheet.",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE, not stdout.")
@click.pass_obj
def report(
    app: App, batches: tuple[str, ...], since: Any, until: Any, group_by: str, fmt: str, output: Path | None
) -> None:
    """What it cost and produced: estimated vs billed, outcomes, delivered seconds, waste, money at risk."""
    from .. import reports

    built = reports.build(app.repo, batches=list(batches) or None, since=since, until=until, group_by=group_by)
    if fmt == "html":
        from ..report_html import render_html

        text = render_html(built)
    elif fmt == "table":
        text = display.report_table(built, wrap=output is None) + "\n"
    else:
        text = reports.render(built, fmt)
    if output is None:
        click.echo(text, nl=False)
        return
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(output)  # all or nothing
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {output}: {exc.strerror}", hint="check the folder and free space") from exc
    click.echo(display.wrote(output), err=True)


@cli.command(epilog=exit_codes_help(3, 6, 9, 10))
@click.option(
    "--since",
    callback=_when,
    metavar="WHEN",
    help="From this UTC date or time, widened to its midnight [default: 24 h ago].",
)
@click.option(
    "--until",
    callback=_when,
    metavar="WHEN",
    help="Up to this UTC date or time, widened to the next midnight [default: now].",
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
    from ..api.client import FalClient
    from ..errors import AuthError, ReconcileMismatchError
    from ..fal_prices import load_synced

    settings = app.settings
    if settings.admin_key is None and not settings.fal_url:
        raise ConfigError(
            "no admin key is set, so fal's usage API cannot be read",
            hint="export FAL_ADMIN_KEY=<an ADMIN key from fal's dashboard> (or FAL_KEY)",
        )
    synced = load_synced(settings.fal_prices_path)
    client = FalClient(settings.hosts, settings.admin_key or Secret("local"))
    try:
        result = rec_module.reconcile(app.repo, client, app.prices, since, until, synced)
    except AuthError as exc:
        raise AuthError(
            f"fal refused the usage API call ({exc.message})",
            hint="the usage API needs an admin key: create one in fal's dashboard and set "
            "FAL_ADMIN_KEY to it (or FAL_KEY)",
        ) from exc
    finally:
        client.close()
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
    from ..api.client import FalClient
    from ..price_sync import sync_prices

    settings = app.settings
    path = output or settings.fal_prices_path
    assert path is not None
    key = settings.fal_key or settings.fal_admin_key
    if key is None and not settings.fal_url:
        raise ConfigError("FAL_KEY is not set, so fal's pricing API cannot be read", hint="export FAL_KEY=…")
    client = FalClient(settings.hosts, key or Secret("local"), pool=1)
    try:
        report = sync_prices(client, app.prices, path)
    finally:
        client.close()
    if as_json:
        emit_json(report.as_dict())
        return
    click.echo(display.prices_synced(report, path))
