"""Commands that process and inspect jobs: run, work, show, retry, cancel, resolve."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from .. import display, runner
from ..config import OpsSettings, Secret, Settings
from ..domain import JobState, RunEvent
from ..errors import ConfigError, shorten
from ..logs import get_logger
from ..records import JobRecord
from ..resolve import resolve_jobs
from .app import App, cli, emit_json, exit_codes_help, parse_usd
from .planning import REQUIRE_JOBS, check_manifest_jobs

# --------------------------------------------------------------------------- run, work and friends

log = get_logger("cli")
_JOBS_FAILED = (1, "some jobs failed, were rejected or are uncertain (the summary lists them)")
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
        click.echo(display.STOPPING, err=True)

    def __enter__(self) -> _Interrupts:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _fal_access(app: App, emulator: bool, concurrency: int) -> Iterator[tuple[Settings, Secret]]:
    """Settings and key for talking to fal, the --fal-url target or an embedded emulator."""
    settings = app.settings
    if emulator:
        from ..emulator.server import start_emulator

        server = start_emulator(concurrency=max(2, concurrency), speed=EMULATOR_SPEED)
        click.echo(display.embedded_emulator(server.url), err=True)
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
    concurrency: int,
    max_in_flight: int | None,
    cancel_on_exit: bool,
    burst: bool,
    settings: Settings,
    strict_verify: bool,
) -> Any:
    from ..pool import PoolSettings

    return PoolSettings(
        concurrency=concurrency,
        max_in_flight=max_in_flight,
        cancel_on_exit=cancel_on_exit,
        burst=burst,
        lease_s=settings.lease_s,
        strict_verify=strict_verify,
        store_url_lifetime_s=settings.store_url_lifetime_s,
    )


class _Tee:
    """The display's reporter first, then metrics and notifications, whose faults never reach the run."""

    def __init__(self, display_reporter: Any, *others: Any) -> None:
        self.display, self.others = display_reporter, others

    def event(self, kind: RunEvent, job: JobRecord | None, **info: Any) -> None:
        self.display.event(kind, job, **info)
        for other in self.others:
            try:
                other.event(kind, job, **info)
            except Exception:  # metrics and notifications must never stop a run
                log.exception("reporting %s to %s failed", kind.value, type(other).__name__)


@contextmanager
def _operations(app: App, settings: Settings, ops: OpsSettings, cap: int) -> Iterator[tuple[list[Any], Any]]:
    """Metrics (when a port is set) and notifications (when URLs are set) for one run: their
    reporters, and the notifier's reporter (None without URLs), closed when the run ends."""
    reporters: list[Any] = []
    metrics = notifier = notifying = None
    try:
        if ops.metrics_port is not None:
            from ..db.gauges import read_gauges
            from ..metrics import DatabaseCollector, Metrics

            engine, daily = app.repo.engine, settings.max_usd_per_day_micro
            metrics = Metrics(DatabaseCollector(lambda run: read_gauges(engine, run, daily), cap))
            try:
                host, port = metrics.serve(ops.metrics_addr, ops.metrics_port)
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve metrics on {shorten(ops.metrics_addr)} port {ops.metrics_port}: "
                    f"{exc.strerror or shorten(str(exc))}",
                    hint="choose a free --metrics-port (0 picks one)",
                ) from exc
            click.echo(f"metrics: serving http://{host}:{port}/metrics", err=True)
            reporters.append(metrics)
        if ops.notify_urls:
            from ..db.queue import JobQueue
            from ..domain import Actor
            from ..notify import Notifier, NotifyingReporter

            audit = JobQueue(app.repo.engine, Actor.current(), settings.lease_s).record_event
            notifier = Notifier(ops, audit)
            notifying = NotifyingReporter(notifier, ops.notify_outage_after_s)
            reporters.append(notifying)
        yield reporters, notifying
    finally:
        if notifier is not None:
            notifier.close()
        if metrics is not None:
            metrics.close()


def _run_command(
    app: App,
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
    metrics_at: tuple[int | None, str | None] = (None, None),
) -> None:
    from ..progress import ProgressReporter

    app.pool_size = concurrency + 4  # every worker thread, the heartbeat and the main thread
    ops = app.settings.ops
    ops = replace(
        ops,
        metrics_port=metrics_at[0] if metrics_at[0] is not None else ops.metrics_port,
        metrics_addr=metrics_at[1] or ops.metrics_addr,
    )
    access = contextmanager(_fal_access)(app, emulator, concurrency)
    with (
        access as (settings, key),
        _Interrupts() as interrupts,
        ProgressReporter(verbose=app.verbose) as progress,
        _operations(app, settings, ops, max_in_flight or concurrency) as (extra, notifying),
    ):
        summary = runner.run_jobs(
            settings,
            app.prices,
            app.repo,
            key,
            manifest=manifest,
            batches=list(batches) or None,
            pool=_pool_settings(concurrency, max_in_flight, cancel_on_exit, burst, settings, strict_verify),
            max_cost_micro_usd=max_cost,
            run_name=run_name,
            reporter=_Tee(progress, *extra),
            stop=interrupts.stop,
            skip_invalid=skip_invalid,
        )
        if notifying is not None:
            notifying.run_ended(summary.to_json())
    if as_json:
        emit_json(summary.to_json())
    else:
        click.echo(display.run_summary(summary))
    err = summary.exit_error()
    if err is not None:
        raise err


_RUN_OPTIONS = [
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
        callback=parse_usd,
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
    click.option(
        "--metrics-port",
        type=click.IntRange(0, 65535),
        metavar="PORT",
        help="Serve Prometheus metrics at http://ADDR:PORT/metrics (0: a free port, said on stderr) "
        "[env: BATCH_RUNNER_METRICS_PORT; default: off].",
    ),
    click.option(
        "--metrics-addr",
        metavar="ADDR",
        help="Address the metrics endpoint listens on [env: BATCH_RUNNER_METRICS_ADDR; default: 127.0.0.1].",
    ),
]


def _run_options(func: Any) -> Any:
    for option in reversed(_RUN_OPTIONS):
        func = option(func)
    return func


@cli.command(epilog=exit_codes_help(_JOBS_FAILED, 3, 4, 5, 6, 7, 8, 9, 130))
@click.argument("manifest", required=False, type=click.Path(path_type=Path))
@click.option(
    "--batch",
    "batches",
    multiple=True,
    metavar="NAME",
    help="Only this batch (repeatable) [default: MANIFEST's batch; without MANIFEST, every batch].",
)
@_run_options
@click.option("--skip-invalid", is_flag=True, help="Enqueue the valid jobs and leave invalid sources out.")
@REQUIRE_JOBS
@click.pass_obj
def run(
    app: App,
    manifest: Path | None,
    batches: tuple[str, ...],
    concurrency: int,
    max_in_flight: int | None,
    max_cost: int | None,
    emulator: bool,
    cancel_on_exit: bool,
    as_json: bool,
    strict_verify: bool,
    metrics_port: int | None,
    metrics_addr: str | None,
    skip_invalid: bool,
    require_jobs: bool,
) -> None:
    """Enqueue MANIFEST (if given) and process every pending job to a verified output, then exit."""
    if manifest is not None:
        check_manifest_jobs(manifest, require_jobs)  # --require-jobs: exit 4 on 0 jobs (planning.py)
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
        metrics_at=(metrics_port, metrics_addr),
    )


@cli.command(
    epilog=exit_codes_help(
        _JOBS_FAILED, (3, "a setting is invalid, FAL_KEY is not set, or no batch has that name"), 5, 6, 8, 9, 130
    )
)
@click.option(
    "--batch",
    "batches",
    multiple=True,
    metavar="NAME",
    help="Work on this batch's jobs only (repeatable) [default: every batch].",
)
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
    app: App,
    batches: tuple[str, ...],
    concurrency: int,
    max_in_flight: int | None,
    max_cost: int | None,
    emulator: bool,
    cancel_on_exit: bool,
    as_json: bool,
    strict_verify: bool,
    metrics_port: int | None,
    metrics_addr: str | None,
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
        metrics_at=(metrics_port, metrics_addr),
    )


@cli.command(epilog=exit_codes_help((3, "no job matches JOB (an id or key prefix), or it matches several"), 6))
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def show(app: App, job: str, as_json: bool) -> None:
    """Show JOB (an id or a key prefix): its input, attempts and whole audit trail."""
    history = runner.job_history(app.repo, job)
    if as_json:
        emit_json(history.to_json())
        return
    click.echo(display.job_history(history.job, history.attempts, history.events))


@cli.command(epilog=exit_codes_help((3, "no job or batch matches a --job or --batch"), 6))
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
    app: App,
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
    result = runner.RetryResult(plan, n, dry_run)
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(display.retry_plan(plan, n, result.may_pay_micro_usd, dry_run))


@cli.command(epilog=exit_codes_help((3, "no job or batch matches a --job or --batch, or a key is missing"), 6, 9))
@click.option("--batch", "batches", multiple=True, help="Cancel this batch's pending jobs (repeatable).")
@click.option("--job", "jobs", multiple=True, metavar="ID", help="Cancel these jobs (id or key prefix; repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def cancel(app: App, batches: tuple[str, ...], jobs: tuple[str, ...], as_json: bool) -> None:
    """Cancel queued jobs here and in-flight ones at fal (needs FAL_KEY or --fal-url for those)."""
    if not batches and not jobs:
        raise click.UsageError("name what to cancel with --batch or --job")
    pending = [JobState.QUEUED, JobState.UNCERTAIN, JobState.SUBMITTED, JobState.IN_PROGRESS]
    selected = runner.select_jobs(app.repo, list(batches) or None, pending, list(jobs))
    result = runner.cancel_with_fal(app.settings, app.repo, selected)
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(display.cancelled(result))


@cli.command(epilog=exit_codes_help(3, 6, 9))
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
def resolve(app: App, batches: tuple[str, ...], settle_after: float, as_json: bool) -> None:
    """Settle uncertain submits and pending bills by asking fal (needs an ADMIN key: FAL_ADMIN_KEY).

    \b
    Each uncertain job's request is looked up in fal's request list (endpoint, time, input hash):
      found (running, or billed)   adopted: the next run follows it, downloads it, records its cost
      found, failed, not billed    queued again
      not found after --settle-after   queued again (fal never created it)
    Bills left pending (a refused run fal may charge) are read from fal's billing events.
    """
    report = resolve_jobs(app.settings, app.repo, list(batches) or None, listing_lag_s=settle_after * 60)
    if as_json:
        emit_json(report.as_dict())
        return
    click.echo(display.resolved(report))
