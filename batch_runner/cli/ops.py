"""Operations commands: health (is this machine ready?) and prune (retention)."""

from __future__ import annotations

import click

from .. import health as health_check
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
