"""The click group, its per-invocation state, the shared option callbacks and the entry point."""

from __future__ import annotations

import gc
import importlib
import json
import pkgutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..config import (
    ENV_CONFIG,
    ENV_DB,
    ENV_FAL_URL,
    ENV_LOG_FORMAT,
    ENV_PRICES,
    LOG_FORMATS,
    Settings,
    environment_help,
    load_settings,
)
from ..domain import usd_to_micro
from ..errors import EXIT_CODES, BatchRunnerError
from ..logs import setup_logging
from ..pricing import PriceTable, load_price_table

if TYPE_CHECKING:  # the database layer (SQLAlchemy, Alembic) is imported on first use
    from ..db.repo import Repository

EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())


def exit_codes_help(*codes: int | tuple[int, str]) -> str:
    """A command's epilog: only the exit codes it can return besides 0, 1 (an unexpected failure)
    and 2 (usage), each with the table's text or the command's own. The whole table is in the
    top-level help, so no command repeats it."""
    lines = [f"  {c[0]:<4} {c[1]}" if isinstance(c, tuple) else f"  {c:<4} {EXIT_CODES[c]}" for c in codes]
    see = "all exit codes: batch-runner --help"
    return f"\b\nExit codes ({see}):\n" + "\n".join(lines) if lines else f"\b\n{see[0].upper()}{see[1:]}."


class CliError(click.ClickException):
    """Our error, shown as `Error: …` on stderr with its documented exit code: one `Error:` line per
    problem (a manifest may have several), each with its hint."""

    def __init__(self, err: BatchRunnerError) -> None:
        super().__init__("\nError: ".join(err.lines()))
        # click types exit_code as a ClassVar; ours is the error's, so it is set per instance
        self.exit_code = err.exit_code  # type: ignore[misc]


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatchRunnerError as err:
            raise CliError(err) from err


#: The module of this package that adds each top-level command. Running one command imports only
#: its module (`plan` needs none of the run machinery); help, listings and a name missing here
#: import every module (load_commands). tests/unit/test_cli_lazy.py keeps the table true.
COMMAND_MODULES = {
    "cancel": "running",
    "db": "tooling",
    "emulator": "tooling",
    "endpoints": "planning",
    "enqueue": "planning",
    "health": "ops",
    "plan": "planning",
    "prices": "accounting",
    "prune": "ops",
    "reconcile": "accounting",
    "report": "accounting",
    "resolve": "running",
    "retry": "running",
    "run": "running",
    "samples": "tooling",
    "show": "running",
    "status": "planning",
    "work": "running",
}


_PACKAGE = __name__.rpartition(".")[0]  # batch_runner.cli


def load_commands() -> None:
    """Import every module of this package, so every command is on the group."""
    for mod in pkgutil.iter_modules(sys.modules[_PACKAGE].__path__):
        importlib.import_module(f"{_PACKAGE}.{mod.name}")


class LazyGroup(Group):
    """The top-level group: a command's module is imported when the command is looked up."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            module = COMMAND_MODULES.get(cmd_name)
            if module is not None:
                importlib.import_module(f"{_PACKAGE}.{module}")
            if cmd_name not in self.commands:
                load_commands()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        load_commands()
        return super().list_commands(ctx)


class App:
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
            from ..db import engine as db_engine
            from ..db.repo import Repository

            self._repo = Repository(
                db_engine.open_engine(
                    self.settings.db_url, pool_size=self.pool_size, allow_new=self.settings.db_is_default
                )
            )
        return self._repo


def parse_usd(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        micro = usd_to_micro(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a USD amount like 25.00") from None
    if micro < 0:
        raise click.BadParameter("must not be negative")
    return micro


def json_default(value: Any) -> Any:
    """JSON for what json cannot encode itself, as every command's JSON writes it: a date or time
    in ISO 8601, anything else (Decimal and the like) as its exact string."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)  # Decimal and the like: exact, as a string


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=json_default))


CLI_HELP = f"""Run batches of Luma Ray video jobs on fal.ai and account for every cent.

FAL_KEY (or FAL_KEY_FILE) is read from the environment and never printed, logged or stored.
Settings come from a flag, else the environment, else the config file (--config FILE, else
./batch-runner.toml, else $XDG_CONFIG_HOME/batch-runner/config.toml), else the default.

\b
Environment (each has a key in the config file, README "Configuration"):
{environment_help()}
"""


@click.group(
    cls=LazyGroup, help=CLI_HELP, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "--config",
    "config_path",
    envvar=ENV_CONFIG,
    show_envvar=True,
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="TOML config file [default: ./batch-runner.toml, else $XDG_CONFIG_HOME/batch-runner/config.toml].",
)
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
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    help=f"Log lines on stderr: human text, or one JSON object a line [env var: {ENV_LOG_FORMAT}; default: text]. "
    "The progress display of `run` stays human.",
)
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.version_option(package_name="batch-runner")
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: Path | None,
    db_url: str | None,
    prices_path: Path | None,
    fal_url: str | None,
    log_format: str | None,
    verbose: int,
) -> None:
    # The environment lies over the config file in load_settings; the flags (click reads their
    # variables too: the same values) lie over both.
    flags = {"db_url": db_url, "prices_path": prices_path, "fal_url": fal_url, "log_format": log_format}
    settings = load_settings(config_path).with_overrides(**flags)
    secrets = [k.reveal() for k in (settings.fal_key, settings.fal_admin_key) if k]
    log = setup_logging(verbose, secrets, settings.log_format)
    if ctx.obj is OWN_PROCESS:
        # The command's module is imported by now (click resolves the command first), and what the
        # imports made lives to the end of the process: out of the collector's sight, collections
        # during the command do not walk it again and again, and the exit does not collect it
        # (about 0.1 s of every command's exit). Only in a process of its own (main), not in a
        # caller's process, whose own objects it would keep for good.
        gc.freeze()
    if settings.config_path is not None:
        log.info("settings from the config file %s (flags and the environment win over it)", settings.config_path)
    ctx.obj = App(settings, verbose)


OWN_PROCESS = object()  # the context's object main() starts with: the command runs in a process of its own


def main() -> None:
    """Console entry point. Click would turn Ctrl-C into exit 1; we exit 130 as documented."""
    try:
        code = cli.main(prog_name="batch-runner", standalone_mode=False, obj=OWN_PROCESS)
    except (KeyboardInterrupt, click.exceptions.Abort):
        from .. import display

        click.echo(display.INTERRUPTED, err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
