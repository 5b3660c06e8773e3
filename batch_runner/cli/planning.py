"""Commands that price and queue work: endpoints, plan, enqueue, status."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from .. import display, planner
from ..domain import JobState, format_usd
from ..errors import BudgetExceededError, InvalidItemsError
from ..jsontext import list_pieces
from ..manifest import load_manifest
from ..records import JobRecord
from .app import App, cli, emit_json, exit_codes_help, json_default, parse_usd


def job_listing(job: JobRecord) -> dict[str, Any]:
    """A job as `status --state … --json` lists it."""
    return {
        "id": job.id,
        "key": job.key,
        "state": job.state.value,
        "endpoint": job.endpoint,
        "source": job.source,
        "output_path": job.output_path,
        "last_error": job.last_error,
        "attempt_count": job.attempt_count,
    }


_STATE_CHOICE = click.Choice([s.value for s in JobState])


_LAZY = re.compile(r'"\\u0000lazy(\d+)"')  # a placeholder as json.dumps writes it


def emit_json_streamed(data: dict[str, Any]) -> None:
    """`emit_json`'s exact text, written piece by piece: a value that is an iterator (a big list
    made lazily, such as a 100,000-job plan) is encoded an item at a time, never whole."""
    lazy: list[Iterator[Any]] = []

    def mark(d: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, Iterator):
                out[k] = f"\0lazy{len(lazy)}"
                lazy.append(v)
            else:
                out[k] = mark(v) if isinstance(v, dict) else v
        return out

    pieces = _LAZY.split(json.dumps(mark(data), indent=2, ensure_ascii=False, default=json_default))
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            click.echo(piece, nl=False)
            continue
        line = pieces[i - 1].rsplit("\n", 1)[-1]
        outer = " " * (len(line) - len(line.lstrip(" ")))  # the indent of the line holding the list
        _echo_list(lazy[int(piece)], outer)
    click.echo("")


def _echo_list(items: Iterator[Any], outer: str) -> None:
    """A list as json.dumps(indent=2) writes it on a line indented by `outer`."""
    for piece in list_pieces(items, outer, _dumps):
        click.echo(piece, nl=False)


def _dumps(item: Any) -> str:
    return json.dumps(item, indent=2, ensure_ascii=False, default=json_default)


# --------------------------------------------------------------------------- endpoints


@cli.command(epilog=exit_codes_help())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def endpoints(app: App, as_json: bool) -> None:
    """List every supported endpoint with its billing unit and prices."""
    rows = planner.endpoint_prices(app.prices)
    if as_json:
        emit_json({"price_table": app.prices.label, "endpoints": rows})
        return
    click.echo(display.endpoints(app.prices.label, rows))


# --------------------------------------------------------------------------- plan / enqueue

REQUIRE_JOBS = click.option(
    "--require-jobs",
    is_flag=True,
    help="Exit with code 4 when the manifest makes 0 jobs (its globs and rows files match nothing).",
)


def check_jobs(jobs: int, invalid: int, require: bool) -> None:
    """0 jobs is normal (an empty nightly folder) and said plainly on stderr; --require-jobs makes it exit 4."""
    if jobs or invalid:
        return
    if require:
        raise InvalidItemsError(
            "0 jobs: the manifest's sources match nothing (--require-jobs)",
            hint="check the globs and rows files, or drop --require-jobs",
        )
    click.echo(display.warning("0 jobs: the manifest's sources match nothing"), err=True)


def check_manifest_jobs(manifest: Path, require: bool) -> None:
    """For `run MANIFEST --require-jobs`: exit 4 before anything runs when the manifest makes 0 jobs."""
    if require:
        check_jobs(len(load_manifest(manifest).jobs), 0, True)


@cli.command(epilog=exit_codes_help(3, 4, 5, 6, 7, 8))
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (a stable interface).")
@click.option(
    "--max-cost",
    callback=parse_usd,
    metavar="USD",
    help="Exit with code 5 when the estimated total (with --diff: the cost the plan adds) is over this amount.",
)
@click.option("--skip-invalid", is_flag=True, help="Leave invalid sources out instead of exiting with code 4.")
@REQUIRE_JOBS
@click.option(
    "--diff",
    "show_diff",
    is_flag=True,
    help="Compare with the job table: new, changed (they bill again), unchanged and removed jobs.",
)
@click.pass_obj
def plan(
    app: App,
    manifest: Path,
    as_json: bool,
    max_cost: int | None,
    skip_invalid: bool,
    require_jobs: bool,
    show_diff: bool,
) -> None:
    """Expand MANIFEST, probe its sources and price every job. Writes no jobs, calls no API."""
    result = planner.plan(manifest, app.settings, app.prices, app.repo)
    check_jobs(len(result.jobs), len(result.invalid), require_jobs)
    diff = planner.diff_plan(result, app.repo) if show_diff else None
    for w in result.warnings:
        click.echo(display.warning(w), err=True)
    if as_json:
        data = result.to_json(lazy=True)
        if diff is not None:
            data["diff"] = diff.to_json(lazy=True)
        emit_json_streamed(data)
    else:
        click.echo(display.plan(result) if diff is None else display.plan_diff(result, diff))
    click.echo(display.probed(result), err=True)
    _check_plan(result, max_cost, skip_invalid, diff)


def _check_plan(
    result: planner.Plan, max_cost: int | None, skip_invalid: bool, diff: planner.PlanDiff | None = None
) -> None:
    budget = result.manifest.budget_micro_usd
    total = result.total_micro_usd
    if budget is not None and total > budget:
        click.echo(display.plan_over_budget(total, budget), err=True)
    if result.invalid and not skip_invalid:
        raise planner.invalid_items_error(result)
    # With --diff, --max-cost is about what tonight adds (new and changed jobs, which bill), not
    # the jobs already in the table.
    compared, what = (total, "estimated total") if diff is None else (diff.added_micro_usd, "cost the plan adds")
    if max_cost is not None and compared > max_cost:
        raise BudgetExceededError(
            f"{what} ${format_usd(compared)} is over --max-cost ${format_usd(max_cost)}",
            hint="reduce the matrix or the sources, or raise --max-cost",
        )


@cli.command(epilog=exit_codes_help(3, 4, 6, 7, 8))
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--skip-invalid", is_flag=True, help="Enqueue the valid jobs and leave invalid sources out.")
@REQUIRE_JOBS
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def enqueue(app: App, manifest: Path, skip_invalid: bool, require_jobs: bool, as_json: bool) -> None:
    """Write MANIFEST's jobs into the job table; jobs already there are left as they are."""
    result = planner.plan(manifest, app.settings, app.prices, app.repo)
    check_jobs(len(result.jobs), len(result.invalid), require_jobs)
    for w in result.warnings:
        click.echo(display.warning(w), err=True)
    added = planner.enqueue(result, app.repo, skip_invalid=skip_invalid)
    if as_json:
        emit_json(
            {"batch": added.batch, "added": added.added, "existing": added.existing, "invalid": len(result.invalid)}
        )
    else:
        click.echo(display.enqueued(added.batch, added.added, added.existing, len(result.invalid)))


@cli.command(epilog=exit_codes_help((3, "no batch named --batch"), 6))
@click.option("--batch", help="Only this batch.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=_STATE_CHOICE,
    help="List the jobs in this state (repeatable) instead of counting.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(app: App, batch: str | None, states: tuple[str, ...], as_json: bool) -> None:
    """Count jobs by batch and state, or list the jobs in some states."""
    if states:
        from .. import runner  # the run machinery (fal client, pool): not needed to plan

        rows = runner.select_jobs(app.repo, [batch] if batch else None, [JobState(s) for s in states], [])
        if as_json:
            emit_json({"jobs": [job_listing(r) for r in rows]})
        elif rows:
            click.echo(display.job_list(rows))
        return
    batches = planner.status(app.repo, batch)
    if as_json:
        emit_json({"batches": [b.to_json() for b in batches]})
    else:
        click.echo(display.batch_status(batches))
