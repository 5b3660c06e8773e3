"""Commands around the work: db upgrade and current, samples, the fal emulator."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from .. import display
from ..db import engine as db_engine
from ..errors import ConfigError
from .app import App, Group, cli, emit_json, exit_codes_help

# --------------------------------------------------------------------------- db and samples


@cli.group(cls=Group)
def db() -> None:
    """Database schema commands."""


@db.command("upgrade", epilog=exit_codes_help(6))
@click.pass_obj
def db_upgrade(app: App) -> None:
    """Create or migrate the database schema to this version's head.

    The one command that creates a new database (and its folders) at --db on purpose.
    """
    url = app.settings.db_url
    shown = db_engine.safe_url(url)
    before = db_engine.stored_revision(url, allow_new=True)  # refuses another program's file first
    engine = db_engine.open_engine(url, auto_migrate=True, allow_new=True)
    after = db_engine.current_revision(engine)
    engine.dispose()
    change = display.schema_change(shown, before, after)
    if change:
        click.echo(change, err=True)
    click.echo(display.schema_revision(shown, after))


@db.command("current", epilog=exit_codes_help(6))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def db_current(app: App, as_json: bool) -> None:
    """Show the database's schema revision and the one this version needs; creates and changes nothing."""
    current = db_engine.stored_revision(app.settings.db_url)
    head = db_engine.head_revision()
    if as_json:
        emit_json({"current": current, "head": head, "up_to_date": current == head})
        return
    click.echo(display.schema_revisions(current, head))


@cli.command(epilog=exit_codes_help((1, "ffmpeg could not write a file"), 8))
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--clips", default=3, show_default=True, type=click.IntRange(0, 100))
@click.option("--images", default=3, show_default=True, type=click.IntRange(0, 100))
@click.option("--duration", default="5", show_default=True, help="Clip length in seconds.")
def samples(folder: Path, clips: int, images: int, duration: str) -> None:
    """Make sample clips and stills with ffmpeg in FOLDER, to try manifests on."""
    from ..media import make_samples

    for path in make_samples(folder, clips=clips, images=images, duration=duration):
        click.echo(str(path))


# --------------------------------------------------------------------------- emulator


@cli.group(cls=Group)
def emulator() -> None:
    """The local fal emulator: free, offline, nothing real is called."""


@emulator.command("serve", epilog=exit_codes_help((3, "--faults is not a valid fault spec")))
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
    from ..emulator.config import EmulatorConfig
    from ..emulator.faults import FaultPlan
    from ..emulator.server import serve

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
        click.echo(display.emulator_listening(url), err=True)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a user stops the server: a clean exit
        serve(config, on_ready=ready)
    click.echo(display.EMULATOR_STOPPED, err=True)
