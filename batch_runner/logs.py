"""Logging to stderr, with every known secret redacted from every record."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

LOGGER_NAME = "batch_runner"
REDACTED = "***"


class RedactFilter(logging.Filter):
    """Replace each secret's text in a record's final message with ***."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, REDACTED)
            record.msg, record.args = message, None
        return True


def setup_logging(verbosity: int, secrets: Iterable[str] = ()) -> logging.Logger:
    """Configure the package logger: warnings by default, info with -v, debug with -vv."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactFilter(secrets))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING - 10 * min(verbosity, 2))
    logger.propagate = False
    return logger


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}")
