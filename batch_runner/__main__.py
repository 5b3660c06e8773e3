"""`python -m batch_runner` is the same as the `batch-runner` command."""

from .cli import main

main()
