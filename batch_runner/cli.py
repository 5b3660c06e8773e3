"""The command line: parse, call a use case, print results on stdout, map errors to exit codes.

The only module that imports click. Progress and warnings go to stderr; results to stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import click

from . import display, planner, runner
from .config import ENV_DB, ENV_FAL_PRICES, ENV_FAL_URL, ENV_PRICES, Secret, Settings
from .db import engine as db_engine
from .db.repo import Repository
from .domain import JobState, format_usd, usd_to_micro
from .errors import EXIT_CODES, BatchRunnerError, BudgetExceededError, ConfigError
from .logs import setup_logging
from .pricing import PriceTable, load_price_table

_STATE_CHOICE = click.Choice([s.value for s in JobState])
EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())


class _CliError(click.ClickException):
    """Our error, shown as `Error: …` on stderr with its documented exit code."""

    def __init__(self, err: BatchRunnerError) -> None:
        super().__init__(str(err))
        # click types exit_code as a ClassVar; ours is the error's, so it is set per instance
        self.exit_code = err.exit_code  # type: ignore[misc]


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatchRunnerError as err:
            raise _CliError(err) from err


class _App:
    """Per-invocation state: settings, and the price table and database opened on first use."""

    def __init__(self, settings: Settings, verbose: int = 0) -> None:
        self.settings = settings
        self.verbose = verbose
        self.pool_size: int | None = None  # run/work size the connection pool to their threads
        self._prices: PriceTable | None = None
        self._repo: Repository | None = None

    @property
    def prices(self) -> PriceTable:
        if self._prices is None:
            self._prices = load_price_table(self.settings.prices_path)
        return self._prices

    @property
    def repo(self) -> Repository:
        """The job database. Only the default location is created by itself: a --db that names no
        database is an error (exit 6), not a new empty ledger that would pay for everything again."""
        if self._repo is None:
            self._repo = Repository(
                db_engine.open_engine(
                    self.settings.db_url, pool_size=self.pool_size, allow_new=self.settings.db_is_default
                )
            )
        return self._repo


def _usd(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        micro = usd_to_micro(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a USD amount like 25.00") from None
    if micro < 0:
        raise click.BadParameter("must not be negative")
    return micro


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)  # Decimal and the like: exact, as a string


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=_json_default))


@click.group(cls=_Group, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    "db_url",
    envvar=ENV_DB,
    show_envvar=True,
    metavar="URL",
    help="Job database: sqlite:///PATH, a file path, or postgresql://user@host/db. Only the default "
    "location is created by itself; `db upgrade` creates one elsewhere "
    "[default: $XDG_DATA_HOME/batch-runner/batch-runner.db, else ~/.local/share/…].",
)
@click.option(
    "--prices",
    "prices_path",
    envvar=ENV_PRICES,
    show_envvar=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Your own price file, laid over the defaults.",
)
@click.option(
    "--fal-url",
    envvar=ENV_FAL_URL,
    show_envvar=True,
    metavar="URL",
    help="Send every fal call (queue, storage, platform API) to this base URL, e.g. an emulator.",
)
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.version_option(package_name="batch-runner")
@click.pass_context
def cli(ctx: click.Context, db_url: str | None, prices_path: Path | None, fal_url: str | None, verbose: int) -> None:
    """Run batches of Luma Ray video jobs on fal.ai and account for every cent.

    FAL_KEY is read from the environment and never printed, logged or stored.

    \b
    Environment: FAL_KEY (or FAL_KEY_ID + FAL_KEY_SECRET), FAL_ADMIN_KEY, BATCH_RUNNER_DB, BATCH_RUNNER_PRICES,
      BATCH_RUNNER_FAL_PRICES, BATCH_RUNNER_FAL_URL,
      BATCH_RUNNER_PROBE_CONCURRENCY (8), BATCH_RUNNER_PROBE_TIMEOUT_S (30),
      BATCH_RUNNER_LEASE_S (60), BATCH_RUNNER_MAX_USD_PER_RUN, BATCH_RUNNER_MAX_USD_PER_DAY,
      BATCH_RUNNER_WARN_AT_USD
    """
    settings = Settings.from_env().with_overrides(db_url=db_url, prices_path=prices_path, fal_url=fal_url)
    setup_logging(verbose, [k.reveal() for k in (settings.fal_key, settings.fal_admin_key) if k])
    ctx.obj = _App(settings, verbose)


# --------------------------------------------------------------------------- endpoints


@cli.command(epilog=EXIT_CODES_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def endpoints(app: _App, as_json: bool) -> None:
    """List every supported endpoint with its billing unit and prices."""
    rows = planner.endpoint_prices(app.prices)
    if as_json:
        _emit_json({"price_table": app.prices.label, "endpoints": rows})
        return
    click.echo(display.endpoints(app.prices.label, rows))


# --------------------------------------------------------------------------- plan / enqueue


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (a stable interface).")
@click.option(
    "--max-cost", callback=_usd, metavar="USD", help="Exit with code 5 when the estimated total is over this amount."
)
@click.option("--skip-invalid", is_flag=True, help="Leave invalid sources out instead of exiting with code 4.")
@click.option(
    "--diff",
    "show_diff",
    is_flag=True,
    help="Compare with the job table: new, changed (they bill again), unchanged and removed jobs.",
)
@click.pass_obj
def plan(app: _App, manifest: Path, as_json: bool, max_cost: int | None, skip_invalid: bool, show_diff: bool) -> None:
    """Expand MANIFEST, probe its sources and price every job. Writes no jobs, calls no API."""
    result = planner.plan(manifest, app.settings, app.prices, app.repo)
    diff = planner.diff_plan(result, app.repo) if show_diff else None
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    if as_json:
        data = result.to_json()
        if diff is not None:
            data["diff"] = diff.to_json()
        _emit_json(data)
    else:
        click.echo(display.plan(result) if diff is None else display.plan_diff(result, diff))
    click.echo(display.probed(result), err=True)
    _check_plan(result, max_cost, skip_invalid)


def _check_plan(result: planner.Plan, max_cost: int | None, skip_invalid: bool) -> None:
    budget = result.manifest.budget_micro_usd
    total = result.total_micro_usd
    if budget is not None and total > budget:
        click.echo(display.plan_over_budget(total, budget), err=True)
    if result.invalid and not skip_invalid:
        raise planner.invalid_items_error(result)
    if max_cost is not None and total > max_cost:
        raise BudgetExceededError(
            f"estimated total ${format_usd(total)} is over --max-cost ${format_usd(max_cost)}",
            hint="reduce the matrix or the sources, or raise --max-cost",
        )


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--skip-invalid", is_flag=True, help="Enqueue the valid jobs and leave invalid sources out.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def enqueue(app: _App, manifest: Path, skip_invalid: bool, as_json: bool) -> None:
    """Write MANIFEST's jobs into the job table; jobs already there are left as they are."""
    result = planner.plan(manifest, app.settings, app.prices, app.repo)
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    added = planner.enqueue(result, app.repo, skip_invalid=skip_invalid)
    if as_json:
        _emit_json(
            {"batch": added.batch, "added": added.added, "existing": added.existing, "invalid": len(result.invalid)}
        )
    else:
        click.echo(display.enqueued(added.batch, added.added, added.existing, len(result.invalid)))


@cli.command(epilog=EXIT_CODES_HELP)
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
def status(app: _App, batch: str | None, states: tuple[str, ...], as_json: bool) -> None:
    """Count jobs by batch and state, or list the jobs in some states."""
    if states:
        rows = runner.select_jobs(app.repo, [batch] if batch else None, [JobState(s) for s in states], [])
        if as_json:
            _emit_json(
                {
                    "jobs": [
                        {
                            k: r[k]
                            for k in (
                                "id",
                                "key",
                                "state",
                                "endpoint",
                                "source",
                                "output_path",
                                "last_error",
                                "attempt_count",
                            )
                        }
                        for r in rows
                    ]
                }
            )
            return
        if rows:
            click.echo(display.job_list(rows))
        return
    counts = planner.status(app.repo, batch)
    if batch is not None and not counts and batch not in app.repo.batch_names():
        raise ConfigError(f'no batch named "{batch}"', hint="run `batch-runner status` to list batches")
    batches: dict[str, dict[str, Any]] = {}
    for c in counts:
        b = batches.setdefault(c.batch, {"batch": c.batch, "jobs": 0, "states": {}, "estimated_micro": 0})
        b["states"][c.state] = c.jobs
        b["jobs"] += c.jobs
        b["estimated_micro"] += c.estimated_micro_usd
    if as_json:
        _emit_json(
            {
                "batches": [
                    {
                        "batch": b["batch"],
                        "jobs": b["jobs"],
                        "states": b["states"],
                        "estimated_cost_usd": format_usd(b["estimated_micro"]),
                    }
                    for b in batches.values()
                ]
            }
        )
        return
    click.echo(display.batch_status(list(batches.values())))


# --------------------------------------------------------------------------- db and samples


@cli.group(cls=_Group)
def db() -> None:
    """Database schema commands."""


@db.command("upgrade", epilog=EXIT_CODES_HELP)
@click.pass_obj
def db_upgrade(app: _App) -> None:
    """Create or migrate the database schema to this version's head.

    The one command that creates a new database (and its folders) at --db on purpose.
    """
    url = app.settings.db_url
    shown = db_engine.safe_url(url)
    before = db_engine.stored_revision(url, allow_new=True)  # refuses another program's file first
    engine = db_engine.open_engine(url, auto_migrate=True, allow_new=True)
    after = db_engine.current_revision(engine)
    engine.dispose()
    if before is None:
        click.echo(f"created the batch-runner schema in {shown}", err=True)
    elif before != after:
        click.echo(f"migrated {shown} from revision {before}", err=True)
    click.echo(f"{shown} is at revision {after}")


@db.command("current", epilog=EXIT_CODES_HELP)
@click.pass_obj
def db_current(app: _App) -> None:
    """Show the database's schema revision and the one this version needs; creates and changes nothing."""
    current = db_engine.stored_revision(app.settings.db_url)
    click.echo(f"current {current or 'none'}   head {db_engine.head_revision()}")


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--clips", default=3, show_default=True, type=click.IntRange(0, 100))
@click.option("--images", default=3, show_default=True, type=click.IntRange(0, 100))
@click.option("--duration", default="5", show_default=True, help="Clip length in seconds.")
def samples(folder: Path, clips: int, images: int, duration: str) -> None:
    """Make sample clips and stills with ffmpeg in FOLDER, to try manifests on."""
    from .media import make_samples

    for path in make_samples(folder, clips=clips, images=images, duration=duration):
        click.echo(str(path))


# --------------------------------------------------------------------------- run, work and friends

EMULATOR_SPEED = 20.0  # the embedded emulator runs fal's delays twenty times faster


class _Interrupts:
    """First Ctrl-C/SIGTERM: stop claiming and leave in-flight work resumable. Second: exit now."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop.is_set():
            os._exit(130)  # the state is already safe: every step is recorded before it happens
        self.stop.set()
        click.echo(
            "\nstopping: no new jobs; in-flight requests stay recorded and resume on the next run "
            "(Ctrl-C again to exit at once)",
            err=True,
        )

    def __enter__(self) -> _Interrupts:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _fal_access(app: _App, emulator: bool, concurrency: int) -> Iterator[tuple[Settings, Secret]]:
    """Settings and key for talking to fal, the --fal-url target or an embedded emulator."""
    settings = app.settings
    if emulator:
        from .emulator.server import start_emulator

        server = start_emulator(concurrency=max(2, concurrency), speed=EMULATOR_SPEED)
        click.echo(
            f"EMULATOR: every fal call goes to a local emulator at {server.url}. Nothing real is called "
            "and nothing is billed; the outputs are real files made with ffmpeg.",
            err=True,
        )
        try:
            yield settings.with_overrides(fal_url=server.url), Secret("emulator")
        finally:
            server.stop()
        return
    if settings.fal_key is None and not settings.fal_url:
        raise ConfigError(
            "FAL_KEY is not set, so nothing can be sent to fal",
            hint="export FAL_KEY=… (or FAL_KEY_ID and FAL_KEY_SECRET), or try it free with --emulator",
        )
    yield settings, settings.fal_key or Secret("local")


def _pool_settings(
    concurrency: int, max_in_flight: int | None, cancel_on_exit: bool, burst: bool, lease_s: float, strict_verify: bool
) -> Any:
    from .pool import PoolSettings

    return PoolSettings(
        concurrency=concurrency,
        max_in_flight=max_in_flight,
        cancel_on_exit=cancel_on_exit,
        burst=burst,
        lease_s=lease_s,
        strict_verify=strict_verify,
    )


def _run_command(
    app: _App,
    manifest: Path | None,
    batches: tuple[str, ...],
    concurrency: int,
    max_in_flight: int | None,
    max_cost: int | None,
    emulator: bool,
    cancel_on_exit: bool,
    as_json: bool,
    skip_invalid: bool,
    run_name: str | None,
    burst: bool,
    strict_verify: bool,
) -> None:
    from contextlib import contextmanager

    from .progress import ProgressReporter

    app.pool_size = concurrency + 4  # every worker thread, the heartbeat and the main thread
    access = contextmanager(_fal_access)(app, emulator, concurrency)
    with access as (settings, key), _Interrupts() as interrupts, ProgressReporter(verbose=app.verbose) as reporter:
        summary = runner.run_jobs(
            settings,
            app.prices,
            app.repo,
            key,
            manifest=manifest,
            batches=list(batches) or None,
            pool=_pool_settings(concurrency, max_in_flight, cancel_on_exit, burst, settings.lease_s, strict_verify),
            max_cost_micro_usd=max_cost,
            run_name=run_name,
            reporter=reporter,
            stop=interrupts.stop,
            skip_invalid=skip_invalid,
        )
    if as_json:
        _emit_json(summary.to_json())
    else:
        click.echo(display.run_summary(summary))
    err = summary.exit_error()
    if err is not None:
        raise err


_RUN_OPTIONS = [
    click.option(
        "--batch", "batches", multiple=True, help="Only this batch (repeatable) [default: the manifest's, else all]."
    ),
    click.option(
        "--concurrency",
        default=2,
        show_default=True,
        type=click.IntRange(1, 256),
        help="Worker threads; also the most requests in flight at fal (its account limits start at 2).",
    ),
    click.option(
        "--max-in-flight",
        type=click.IntRange(1, 1024),
        help="Cap on requests in flight across all workers [default: --concurrency].",
    ),
    click.option(
        "--max-cost",
        callback=_usd,
        metavar="USD",
        help="Budget for this run: dispatch stops before it would be exceeded (exit 5).",
    ),
    click.option(
        "--emulator", is_flag=True, help="Start the embedded fal emulator and use it: nothing real is called."
    ),
    click.option("--cancel-on-exit", is_flag=True, help="On Ctrl-C, cancel in-flight requests at fal."),
    click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON on stdout."),
    click.option(
        "--strict-verify",
        is_flag=True,
        help="Fail a job whose output differs from the output convention (size, exact length), not "
        "only one that breaks what fal promises (a video of the requested aspect ratio).",
    ),
]


def _run_options(func: Any) -> Any:
    for option in reversed(_RUN_OPTIONS):
        func = option(func)
    return func


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("manifest", required=False, type=click.Path(path_type=Path))
@_run_options
@click.option("--skip-invalid", is_flag=True, help="Enqueue the valid jobs and leave invalid sources out.")
@click.pass_obj
def run(
    app: _App,
    manifest: Path | None,
    batches: tuple[str, ...],
    concurrency: int,
    max_in_flight: int | None,
    max_cost: int | None,
    emulator: bool,
    cancel_on_exit: bool,
    as_json: bool,
    strict_verify: bool,
    skip_invalid: bool,
) -> None:
    """Enqueue MANIFEST (if given) and process every pending job to a verified output, then exit."""
    _run_command(
        app,
        manifest,
        batches,
        concurrency,
        max_in_flight,
        max_cost,
        emulator,
        cancel_on_exit,
        as_json,
        skip_invalid,
        None,
        burst=True,
        strict_verify=strict_verify,
    )


@cli.command(epilog=EXIT_CODES_HELP)
@_run_options
@click.option(
    "--run", "run_name", metavar="NAME", help="Join the named run, sharing its budget with every worker that joins it."
)
@click.option(
    "--until-done",
    is_flag=True,
    help="Exit once nothing in scope is queued or in flight on any worker (for cron) "
    "[default: keep waiting for new jobs].",
)
@click.pass_obj
def work(
    app: _App,
    batches: tuple[str, ...],
    concurrency: int,
    max_in_flight: int | None,
    max_cost: int | None,
    emulator: bool,
    cancel_on_exit: bool,
    as_json: bool,
    strict_verify: bool,
    run_name: str | None,
    until_done: bool,
) -> None:
    """Process jobs as they are enqueued (one process per machine; all share the database)."""
    _run_command(
        app,
        None,
        batches,
        concurrency,
        max_in_flight,
        max_cost,
        emulator,
        cancel_on_exit,
        as_json,
        False,
        run_name,
        burst=until_done,
        strict_verify=strict_verify,
    )


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def show(app: _App, job: str, as_json: bool) -> None:
    """Show JOB (an id or a key prefix): its input, attempts and whole audit trail."""
    row, attempts, events = runner.job_history(app.repo, job)
    if as_json:
        _emit_json({"job": row, "attempts": attempts, "events": events})
        return
    click.echo(display.job_history(row, attempts, events))


@cli.command(epilog=EXIT_CODES_HELP)
@click.option("--batch", "batches", multiple=True, help="Only this batch (repeatable).")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["failed", "cancelled", "uncertain", "rejected"]),
    help="Which jobs to queue again [default: failed].",
)
@click.option("--uncertain", is_flag=True, help="Same as --state uncertain: resubmit on purpose.")
@click.option("--job", "jobs", multiple=True, metavar="ID", help="Only these jobs (id or key prefix; repeatable).")
@click.option("--dry-run", is_flag=True, help="List what would be queued and what each may pay again; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def retry(
    app: _App,
    batches: tuple[str, ...],
    states: tuple[str, ...],
    uncertain: bool,
    jobs: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
) -> None:
    """Queue failed (or cancelled, uncertain, rejected) jobs again. A paid output that never
    arrived is downloaded again for free; other jobs get new attempts (a fresh set of automatic
    attempts each), which fal bills again when they succeed."""
    chosen = [JobState(s) for s in states] or ([] if uncertain else [JobState.FAILED])
    if uncertain:
        chosen.append(JobState.UNCERTAIN)
    selected = runner.select_jobs(app.repo, list(batches) or None, chosen, list(jobs))
    plan = runner.retry_plan(app.repo, selected, chosen)
    n = len(plan) if dry_run else runner.retry_jobs(app.repo, selected, chosen)
    may_pay = sum(item.may_pay_micro_usd for item in plan)
    if as_json:
        _emit_json(
            {
                "dry_run": dry_run,
                "queued": n,
                "may_pay_usd": format_usd(may_pay),
                "jobs": [item.as_dict() for item in plan],
            }
        )
        return
    click.echo(display.retry_plan(plan, n, may_pay, dry_run))


@cli.command(epilog=EXIT_CODES_HELP)
@click.option("--batch", "batches", multiple=True, help="Cancel this batch's pending jobs (repeatable).")
@click.option("--job", "jobs", multiple=True, metavar="ID", help="Cancel these jobs (id or key prefix; repeatable).")
@click.pass_obj
def cancel(app: _App, batches: tuple[str, ...], jobs: tuple[str, ...]) -> None:
    """Cancel queued jobs here and in-flight ones at fal (needs FAL_KEY or --fal-url for those)."""
    if not batches and not jobs:
        raise click.UsageError("name what to cancel with --batch or --job")
    pending = [JobState.QUEUED, JobState.UNCERTAIN, JobState.SUBMITTED, JobState.IN_PROGRESS]
    selected = runner.select_jobs(app.repo, list(batches) or None, pending, list(jobs))
    from .api.client import FalClient

    settings = app.settings
    client = admin = None
    if settings.fal_key or settings.fal_url:
        client = FalClient(settings.hosts, settings.fal_key or Secret("local"))
    if settings.admin_key or settings.fal_url:
        admin = FalClient(settings.hosts, settings.admin_key or Secret("local"))
    try:
        result = runner.cancel_jobs(app.repo, selected, client, admin)
    finally:
        for c in (client, admin):
            if c:
                c.close()
    click.echo(display.cancelled(result))


@cli.command(epilog=EXIT_CODES_HELP)
@click.option("--batch", "batches", multiple=True, help="Only this batch (repeatable) [default: all].")
@click.option(
    "--settle-after",
    default=15.0,
    show_default=True,
    type=click.FloatRange(min=0),
    metavar="MIN",
    help="A submit fal's request list does not show after this many minutes was never created.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def resolve(app: _App, batches: tuple[str, ...], settle_after: float, as_json: bool) -> None:
    """Settle uncertain submits and pending bills by asking fal (needs an ADMIN key: FAL_ADMIN_KEY).

    \b
    Each uncertain job's request is looked up in fal's request list (endpoint, time, input hash):
      found (running, or billed)   adopted: the next run follows it, downloads it, records its cost
      found, failed, not billed    queued again
      not found after --settle-after   queued again (fal never created it)
    Bills left pending (a refused run fal may charge) are read from fal's billing events.
    """
    report = runner.resolve_jobs(app.settings, app.repo, list(batches) or None, listing_lag_s=settle_after * 60)
    if as_json:
        _emit_json(report.as_dict())
        return
    click.echo(display.resolved(report))


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


@cli.command(epilog=EXIT_CODES_HELP)
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
    app: _App, batches: tuple[str, ...], since: Any, until: Any, group_by: str, fmt: str, output: Path | None
) -> None:
    """What it cost and produced: estimated vs billed, outcomes, delivered seconds, waste, money at risk."""
    from . import reports

    built = reports.build(app.repo, batches=list(batches) or None, since=since, until=until, group_by=group_by)
    if fmt == "html":
        from .report_html import render_html

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
    click.echo(f"wrote {output}", err=True)


@cli.command(epilog=EXIT_CODES_HELP)
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
def reconcile(app: _App, since: Any, until: Any, as_json: bool) -> None:
    """Compare our ledger with fal's usage API per endpoint and whole UTC day (exit 10 when they differ).

    Needs an ADMIN key (FAL_ADMIN_KEY, else FAL_KEY). The window is widened to whole UTC days on
    both sides. Price drift is judged by fal's own numbers: its pricing API against the last
    `prices sync`, and against the price it billed; a unit batch-runner cannot map is only a note.
    """
    from . import reconcile as rec_module
    from .api.client import FalClient
    from .errors import AuthError, ReconcileMismatchError
    from .fal_prices import load_synced

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


@cli.group(cls=_Group)
def prices() -> None:
    """fal's own prices: sync them from fal's pricing API for plans and budgets."""


@prices.command("sync", epilog=EXIT_CODES_HELP)
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
def prices_sync(app: _App, output: Path | None, as_json: bool) -> None:
    """Read fal's pricing API for every catalog endpoint into a dated local price file.

    `plan` and the budgets then use the higher of the price table and these prices; `reconcile`
    reports when fal's prices move away from them. Nothing is written when the call fails.
    """
    from .api.client import FalClient
    from .price_sync import sync_prices

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
        _emit_json(report.as_dict())
        return
    click.echo(display.prices_synced(report, path))


# --------------------------------------------------------------------------- emulator


@cli.group(cls=_Group)
def emulator() -> None:
    """The local fal emulator: free, offline, nothing real is called."""


@emulator.command("serve", epilog=EXIT_CODES_HELP)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option(
    "--concurrency",
    default=2,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Requests in progress at once (fal's account limit).",
)
@click.option(
    "--speed",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Time factor: 10 runs fal's queue and processing delays ten times faster.",
)
@click.option("--instant", is_flag=True, help="No delays; render each output shape once and reuse it.")
@click.option(
    "--reuse-renders",
    is_flag=True,
    help="Render each output shape once and reuse it, with the usual delays (for load tests).",
)
@click.option(
    "--faults",
    default="",
    metavar="SPEC",
    help="Fault injection, e.g. 'rate_limit=0.1,drop_after_submit=1/1' (see README).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the fault decisions.")
@click.option("--fps", default=24, show_default=True, type=click.IntRange(1, 60), help="Frame rate of outputs.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep uploads and outputs here [default: a temporary folder].",
)
@click.option(
    "--hold-submit",
    default=0.0,
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Hold each accepted submit this long before answering (a crash-window test aid).",
)
@click.option("--hold-submit-count", type=click.IntRange(min=1), metavar="N", help="Hold only the first N submits.")
@click.option(
    "--hold-download",
    default=0.0,
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Pause each output download halfway this long (a crash-window test aid).",
)
@click.option("--hold-download-count", type=click.IntRange(min=1), metavar="N", help="Hold only the first N downloads.")
@click.option(
    "--no-billable-units",
    is_flag=True,
    help="Leave out x-fal-billable-units on results (fal does not document it for API users).",
)
def emulator_serve(
    host: str,
    port: int,
    concurrency: int,
    speed: float,
    instant: bool,
    reuse_renders: bool,
    faults: str,
    seed: int,
    fps: int,
    data_dir: Path | None,
    hold_submit: float,
    hold_submit_count: int | None,
    hold_download: float,
    hold_download_count: int | None,
    no_billable_units: bool,
) -> None:
    """Serve the fal emulator until Ctrl-C; prints its URL (use it as --fal-url)."""
    from .emulator.config import EmulatorConfig
    from .emulator.faults import FaultPlan
    from .emulator.server import serve

    try:
        FaultPlan(faults, seed)
    except ValueError as exc:
        raise ConfigError(f"--faults: {exc}") from None
    config = EmulatorConfig(
        host=host,
        port=port,
        concurrency=concurrency,
        speed=speed,
        instant=instant,
        reuse_renders=reuse_renders,
        faults=faults,
        seed=seed,
        fps=fps,
        data_dir=data_dir,
        hold_submit_s=hold_submit,
        hold_submit_count=hold_submit_count,
        hold_download_s=hold_download,
        hold_download_count=hold_download_count,
        send_billable_units=not no_billable_units,
    )

    def ready(url: str) -> None:
        click.echo(url)
        click.echo(
            f"fal emulator listening on {url}: nothing real is called, nothing is billed. "
            f"Point batch-runner at it with --fal-url {url}",
            err=True,
        )

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a user stops the server: a clean exit
        serve(config, on_ready=ready)
    click.echo("fal emulator stopped", err=True)


def main() -> None:
    """Console entry point. Click would turn Ctrl-C into exit 1; we exit 130 as documented."""
    try:
        code = cli.main(prog_name="batch-runner", standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
