"""The command line: parse, call a use case, print results on stdout, map errors to exit codes.

The only module that imports click. Progress and warnings go to stderr; results to stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from . import runner
from .config import ENV_DB, ENV_FAL_URL, ENV_PRICES, Settings
from .db import engine as db_engine
from .db.repo import Repository
from .domain import format_usd, usd_to_micro
from .errors import EXIT_CODES, BatchRunnerError, BudgetExceededError, ConfigError, DatabaseError
from .logs import setup_logging
from .pricing import PriceTable, load_price_table

EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())


class _CliError(click.ClickException):
    """Our error, shown as `Error: …` on stderr with its documented exit code."""

    def __init__(self, err: BatchRunnerError) -> None:
        super().__init__(str(err))
        self.exit_code = err.exit_code


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatchRunnerError as err:
            raise _CliError(err) from err


class _App:
    """Per-invocation state: settings, and the price table and database opened on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._prices: PriceTable | None = None
        self._repo: Repository | None = None

    @property
    def prices(self) -> PriceTable:
        if self._prices is None:
            self._prices = load_price_table(self.settings.prices_path)
        return self._prices

    @property
    def repo(self) -> Repository:
        if self._repo is None:
            self._repo = Repository(db_engine.open_engine(self.settings.db_url))
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


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@click.group(cls=_Group, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", "db_url", envvar=ENV_DB, show_envvar=True, metavar="URL",
              help="Job database: sqlite:///PATH, a file path, or postgresql://user@host/db "
                   "[default: ~/.local/share/batch-runner/batch-runner.db].")
@click.option("--prices", "prices_path", envvar=ENV_PRICES, show_envvar=True,
              type=click.Path(dir_okay=False, path_type=Path), help="Your own price file, laid over the defaults.")
@click.option("--fal-url", envvar=ENV_FAL_URL, show_envvar=True, metavar="URL",
              help="Send every fal call (queue, storage, platform API) to this base URL, e.g. an emulator.")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.version_option(package_name="batch-runner")
@click.pass_context
def cli(ctx: click.Context, db_url: str | None, prices_path: Path | None, fal_url: str | None,
        verbose: int) -> None:
    """Run batches of Luma Ray video jobs on fal.ai and account for every cent.

    FAL_KEY is read from the environment and never printed, logged or stored.
    """
    settings = Settings.from_env().with_overrides(db_url=db_url, prices_path=prices_path, fal_url=fal_url)
    setup_logging(verbose, [settings.fal_key.reveal()] if settings.fal_key else [])
    ctx.obj = _App(settings)


# --------------------------------------------------------------------------- endpoints


@cli.command(epilog=EXIT_CODES_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def endpoints(app: _App, as_json: bool) -> None:
    """List every supported endpoint with its billing unit and prices."""
    rows = runner.endpoint_prices(app.prices)
    if as_json:
        _emit_json({"price_table": app.prices.label, "endpoints": rows})
        return
    click.echo(f"price table: {app.prices.label}   (* = unverified price)")
    for ep in rows:
        flag = "" if ep["verified"] else " *"
        click.echo(f"\n{ep['id']}{flag}\n  alias {ep['alias']}   billing {ep['billing']}   unit {ep['unit']}"
                   + (f"   max source {ep['max_source_s']} s" if ep["max_source_s"] else ""))
        for p in ep["prices"]:
            what = " ".join(x for x in (p["resolution"], p["duration"]) if x) or "any"
            click.echo(f"    {what:<14} ${p['usd']} per {p['per']}")
        for m in ep["modifiers"]:
            cond = ", ".join(f"{k}={json.dumps(v)}" for k, v in m["when"].items())
            click.echo(f"    × {m['multiplier']} when {cond}" + ("" if m["verified"] else " *"))
        if not ep["verified"]:
            click.echo(f"    * {ep['source']}")


# --------------------------------------------------------------------------- plan / enqueue


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (a stable interface).")
@click.option("--max-cost", callback=_usd, metavar="USD",
              help="Exit with code 5 when the estimated total is over this amount.")
@click.option("--skip-invalid", is_flag=True, help="Leave invalid sources out instead of exiting with code 4.")
@click.pass_obj
def plan(app: _App, manifest: Path, as_json: bool, max_cost: int | None, skip_invalid: bool) -> None:
    """Expand MANIFEST, probe its sources and price every job. Writes no jobs, calls no API."""
    result = runner.plan(manifest, app.settings, app.prices, app.repo)
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    if as_json:
        _emit_json(result.to_json())
    else:
        _print_plan(result)
    click.echo(f"probed {result.probes_run} source(s), {result.probes_cached} from cache", err=True)
    _check_plan(result, max_cost, skip_invalid)


def _check_plan(result: runner.Plan, max_cost: int | None, skip_invalid: bool) -> None:
    budget = result.manifest.budget_micro_usd
    total = result.total_micro_usd
    if budget is not None and total > budget:
        click.echo(f"warning: estimate ${format_usd(total)} is over the manifest budget ${format_usd(budget)}; "
                   "a run will stop dispatching at the budget", err=True)
    if result.invalid and not skip_invalid:
        raise runner.invalid_items_error(result)
    if max_cost is not None and total > max_cost:
        raise BudgetExceededError(f"estimated total ${format_usd(total)} is over --max-cost ${format_usd(max_cost)}",
                                  hint="reduce the matrix or the sources, or raise --max-cost")


def _print_plan(result: runner.Plan) -> None:
    m = result.manifest
    root = m.output_root
    click.echo(f"batch {m.batch}   endpoint {m.endpoint.id}   price table {result.price_table}")
    header = f"{'key':<10} {'source':<28} {'parameters':<30} {'dur s':>7} {'units':>6} {'cost $':>9}  output"
    click.echo(header)
    click.echo("-" * len(header))
    swept = [k for k in ("aspect_ratio", "resolution", "duration", "mode", "edit_strength") if k in m.endpoint.field_map]
    lines = []
    for j in result.jobs:
        est = j.estimate
        assert est is not None
        src = Path(j.source).name if j.source else "-"
        params = " ".join(str(j.params[k]) for k in swept if k in j.params)
        dur = f"{j.probe.duration:.2f}" if j.probe and j.probe.duration is not None else "-"
        out = Path(j.output)
        out_s = str(out.relative_to(root)) if out.is_relative_to(root) else str(out)
        flag = "" if est.verified else "*"
        lines.append(f"{j.key[:10]:<10} {src[:28]:<28} {params[:30]:<30} {dur:>7} {str(est.billable_units):>6} "
                     f"{est.usd + flag:>9}  {out_s}")
    click.echo("\n".join(lines))
    for item in result.invalid:
        click.echo(f"INVALID    {item.source}: {item.reason}  ({item.origin})")
    click.echo("")
    for what in ("endpoint", "resolution"):
        for k, (n, c) in result.totals_by(what).items():
            click.echo(f"  by {what:<11} {k:<48} {n:>6} jobs  ${format_usd(c)}")
    click.echo(f"  {'total':<62} {len(result.jobs):>6} jobs  ${format_usd(result.total_micro_usd)}")
    if m.budget_micro_usd is not None:
        click.echo(f"  budget per run ${format_usd(m.budget_micro_usd)}")
    if any(j.estimate and not j.estimate.verified for j in result.jobs):
        click.echo("  * price not verified against fal's published prices; see `batch-runner endpoints`")


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--skip-invalid", is_flag=True, help="Enqueue the valid jobs and leave invalid sources out.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def enqueue(app: _App, manifest: Path, skip_invalid: bool, as_json: bool) -> None:
    """Write MANIFEST's jobs into the job table; jobs already there are left as they are."""
    result = runner.plan(manifest, app.settings, app.prices, app.repo)
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    added = runner.enqueue(result, app.repo, skip_invalid=skip_invalid)
    if as_json:
        _emit_json({"batch": added.batch, "added": added.added, "existing": added.existing,
                    "invalid": len(result.invalid)})
    else:
        click.echo(f"batch {added.batch}: {added.added} job(s) added, {added.existing} already in the table"
                   + (f", {len(result.invalid)} invalid source(s) skipped" if result.invalid else ""))


@cli.command(epilog=EXIT_CODES_HELP)
@click.option("--batch", help="Only this batch.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(app: _App, batch: str | None, as_json: bool) -> None:
    """Count jobs by batch and state."""
    counts = runner.status(app.repo, batch)
    if batch is not None and not counts and batch not in app.repo.batch_names():
        raise ConfigError(f'no batch named "{batch}"', hint="run `batch-runner status` to list batches")
    batches: dict[str, dict[str, Any]] = {}
    for c in counts:
        b = batches.setdefault(c.batch, {"batch": c.batch, "jobs": 0, "states": {}, "estimated_micro": 0})
        b["states"][c.state] = c.jobs
        b["jobs"] += c.jobs
        b["estimated_micro"] += c.estimated_micro_usd
    if as_json:
        _emit_json({"batches": [{"batch": b["batch"], "jobs": b["jobs"], "states": b["states"],
                                 "estimated_cost_usd": format_usd(b["estimated_micro"])} for b in batches.values()]})
        return
    if not batches:
        click.echo("no jobs yet: `batch-runner enqueue MANIFEST` adds some")
        return
    for b in batches.values():
        states = "  ".join(f"{s} {n}" for s, n in sorted(b["states"].items()))
        click.echo(f"{b['batch']:<30} {b['jobs']:>7} jobs  ${format_usd(b['estimated_micro']):>10} estimated  {states}")


# --------------------------------------------------------------------------- db and samples


@cli.group(cls=_Group)
def db() -> None:
    """Database schema commands."""


@db.command("upgrade", epilog=EXIT_CODES_HELP)
@click.pass_obj
def db_upgrade(app: _App) -> None:
    """Create or migrate the database schema to this version's head."""
    engine = db_engine.open_engine(app.settings.db_url, auto_migrate=True)
    click.echo(f"{db_engine.safe_url(app.settings.db_url)} is at revision {db_engine.current_revision(engine)}")


@db.command("current", epilog=EXIT_CODES_HELP)
@click.pass_obj
def db_current(app: _App) -> None:
    """Show the database's schema revision and the one this version needs."""
    engine = db_engine.create(app.settings.db_url)
    try:
        current = db_engine.current_revision(engine)
    except Exception as exc:  # noqa: BLE001 - translated at this boundary
        raise DatabaseError(f"cannot read {db_engine.safe_url(app.settings.db_url)}: {exc}") from exc
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


# --------------------------------------------------------------------------- emulator


@cli.group(cls=_Group)
def emulator() -> None:
    """The local fal emulator: free, offline, nothing real is called."""


@emulator.command("serve", epilog=EXIT_CODES_HELP)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--concurrency", default=2, show_default=True, type=click.IntRange(1, 1000),
              help="Requests in progress at once (fal's account limit).")
@click.option("--speed", default=10.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Time factor: 10 runs fal's queue and processing delays ten times faster.")
@click.option("--instant", is_flag=True, help="No delays; render each output shape once and reuse it.")
@click.option("--faults", default="", metavar="SPEC",
              help="Fault injection, e.g. 'rate_limit=0.1,drop_after_submit=1/1' (see README).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the fault decisions.")
@click.option("--fps", default=24, show_default=True, type=click.IntRange(1, 60), help="Frame rate of outputs.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep uploads and outputs here [default: a temporary folder].")
def emulator_serve(host: str, port: int, concurrency: int, speed: float, instant: bool, faults: str, seed: int,
                   fps: int, data_dir: Path | None) -> None:
    """Serve the fal emulator until Ctrl-C; prints its URL (use it as --fal-url)."""
    from .emulator.config import EmulatorConfig
    from .emulator.faults import FaultPlan
    from .emulator.server import serve

    try:
        FaultPlan(faults, seed)
    except ValueError as exc:
        raise ConfigError(f"--faults: {exc}") from None
    config = EmulatorConfig(host=host, port=port, concurrency=concurrency, speed=speed, instant=instant,
                            faults=faults, seed=seed, fps=fps, data_dir=data_dir)

    def ready(url: str) -> None:
        click.echo(url)
        click.echo(f"fal emulator listening on {url}: nothing real is called, nothing is billed. "
                   f"Point batch-runner at it with --fal-url {url}", err=True)

    try:
        serve(config, on_ready=ready)
    except KeyboardInterrupt:  # Ctrl-C is how a user stops the server: a clean exit
        pass
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
