"""The command line: parse, call a use case, display the result, map errors to exit codes.

The only package that imports click. `app` holds the group and what every command shares; the other
modules add their commands to it when imported. Progress and warnings go to stderr; results to stdout.
"""

from . import accounting, ops, planning, running, tooling  # noqa: F401  (importing them adds their commands)
from .app import cli, main

__all__ = ["cli", "main"]
