"""Logging to stderr as human lines or one JSON object a line, with every known secret redacted
from every record, and the job, batch, run and request id of the work in hand when known."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

LOGGER_NAME = "batch_runner"
REDACTED = "***"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: What a JSON line says of the work in hand, from the record's `extra=` or else `log_context`.
CONTEXT_FIELDS = ("job", "batch", "run", "request_id")

_context: ContextVar[dict[str, Any] | None] = ContextVar("batch_runner_log_context", default=None)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Every record logged in this block (in this thread or task) carries these fields, e.g.
    `with log_context(job=claim.job.id, batch=…, run=…):`; None values are left out."""
    known = {k: v for k, v in fields.items() if v is not None}
    token = _context.set({**(_context.get() or {}), **known})
    try:
        yield
    finally:
        _context.reset(token)


def bind_log_context(**fields: Any) -> None:
    """Add fields to the current `log_context` block as they become known (a submit's request id);
    they end with the block."""
    known = {k: v for k, v in fields.items() if v is not None}
    _context.set({**(_context.get() or {}), **known})


class _Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = [s for s in secrets if s]

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


class RedactFilter(logging.Filter):
    """Replace each secret's text in a record's final message with ***."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.redact = _Redactor(secrets)
        self.secrets = self.redact.secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = self.redact(record.getMessage()), None
        return True


class TextFormatter(logging.Formatter):
    """Today's human line; a traceback's text is redacted too (an exception may quote a header)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__(TEXT_FORMAT)
        self.redact = _Redactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO 8601 UTC), level, logger, event (the message), the context
    fields that are known, and the traceback as `exception`; every string redacted."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.redact = _Redactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        line: dict[str, Any] = {
            "time": when.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": self.redact(record.getMessage()),
        }
        context = _context.get() or {}
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            value = context.get(name) if value is None else value
            if value is not None:
                line[name] = self.redact(str(value)) if isinstance(value, str) else value
        if record.exc_info:
            line["exception"] = self.redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False, default=str)


def setup_logging(verbosity: int, secrets: Iterable[str] = (), log_format: str = "text") -> logging.Logger:
    """Configure the package logger: warnings by default, info with -v, debug with -vv; human
    lines, or JSON lines with `log_format="json"` (both go to stderr)."""
    secrets = list(secrets)
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(secrets) if log_format == "json" else TextFormatter(secrets))
    handler.addFilter(RedactFilter(secrets))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING - 10 * min(verbosity, 2))
    logger.propagate = False
    return logger


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}")
