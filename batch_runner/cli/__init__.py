"""The command line: parse, call a use case, display the result, map errors to exit codes.

The only package that imports click. `app` holds the group and what every command shares; the other
modules add their commands to it when imported: the one a command needs when it runs (so `plan`
starts without the run machinery), all of them for `cli` taken from here (tests, help).
Progress and warnings go to stderr; results to stdout.
"""

from typing import Any

from .app import main

__all__ = ["cli", "main"]


def __getattr__(name: str) -> Any:
    """`cli`: the group with every command on it."""
    if name == "cli":
        from .app import cli, load_commands

        load_commands()
        globals()["cli"] = cli
        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
