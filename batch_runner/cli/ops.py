"""Operations commands: health (is this machine ready?) and prune (retention)."""

from __future__ import annotations

from datetime import timedelta

import click

from .. import health as health_check
from .. import prune as prune_case
from .app import App, cli, emit_json, exit_codes_help


@cli.command("health", epilog=exit_codes_help(11))
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for probes).")
@click.pass_obj
def health(app: App, as_json: bool) -> None:
    """Check the database (reachable, migrated), ffprobe, fal (or --fal-url) and workers' leases.

    Creates, migrates and pays for nothing: fal is asked one unbilled pricing question. A lease
    is stale when it ended more than the lease time (BATCH_RUNNER_LEASE_S) ago: the worker that
    held it died and no worker is running to take its jobs over.
    """
    result = health_check.check(app.settings)
    if as_json:
        emit_json(result.as_dict())
    else:
        for c in result.checks:
            hint = f" ({c.hint})" if c.hint and not c.ok else ""
            click.echo(f"{c.status:<4} {c.name:<8} {c.detail}{hint}")
    if not result.healthy:
        raise result.error()


def _older_than(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    try:
        return prune_case.parse_age(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command("prune", epilog=exit_codes_help(6))
@click.option(
    "--older-than",
    required=True,
    metavar="AGE",
    callback=_older_than,
    help="The horizon: 90d, 12w or 36h before now.",
)
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def prune(app: App, older_than: timedelta, dry_run: bool, as_json: bool) -> None:
    """Remove finished jobs' attempts and events, and probe-cache rows, older than AGE.

    Job rows stay (an enqueue still knows a job was done and paid for), and `report` still adds
    up: each pruned job's figures go into daily rollups (per UTC day, batch, project, endpoint)
    in the same transaction that deletes its rows, a hundred jobs at a time, so live workers are
    not held up. Jobs with an open attempt or a bill fal has not confirmed yet are kept. On SQLite
    the file is compacted (VACUUM) afterwards.
    """
    result = prune_case.prune(app.repo, older_than, dry_run=dry_run)
    if as_json:
        emit_json(result.as_dict())
        return
    c = result.counts
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"{verb} {c.attempts} attempt(s) and {c.events} event(s) ({c.jobs} finished job(s), their figures "
        f"kept in daily rollups) and {c.probes} probe-cache row(s) older than "
        f"{result.horizon.isoformat(timespec='seconds')}"
    )
    if result.vacuumed:
        click.echo("compacted the SQLite file (VACUUM)", err=True)
    if result.vacuum_failed:
        click.echo(
            f"warning: the SQLite file was not compacted ({result.vacuum_failed}); "
            "the next prune that removes rows compacts it",
            err=True,
        )
