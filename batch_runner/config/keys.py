"""The settings' vocabulary: every key (TOML key, environment variable, kind, default), secrets,
fal's hosts, and how one value is read from its variable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..errors import ConfigError, shorten

ENV_DB = "BATCH_RUNNER_DB"
ENV_PRICES = "BATCH_RUNNER_PRICES"
ENV_FAL_PRICES = "BATCH_RUNNER_FAL_PRICES"  # the file `prices sync` writes and `plan` reads
FAL_PRICES_FILE = "fal-prices.json"
ENV_FAL_URL = "BATCH_RUNNER_FAL_URL"
ENV_PROBE_CONCURRENCY = "BATCH_RUNNER_PROBE_CONCURRENCY"
ENV_PROBE_TIMEOUT_S = "BATCH_RUNNER_PROBE_TIMEOUT_S"
ENV_FAL_KEY = "FAL_KEY"
ENV_FAL_KEY_FILE = "FAL_KEY_FILE"  # a file holding FAL_KEY (FAL_KEY itself wins when both are set)
ENV_FAL_KEY_ID, ENV_FAL_KEY_SECRET = "FAL_KEY_ID", "FAL_KEY_SECRET"  # fal-client auth.py: `Key id:secret`
ENV_FAL_ADMIN_KEY = "FAL_ADMIN_KEY"  # an ADMIN-scope key for fal's usage, request listing and billing events
ENV_FAL_ADMIN_KEY_FILE = "FAL_ADMIN_KEY_FILE"
ENV_LEASE_S = "BATCH_RUNNER_LEASE_S"
ENV_STORE_URL_LIFETIME_S = "BATCH_RUNNER_STORE_URL_LIFETIME_S"
ENV_MAX_USD_PER_DAY = "BATCH_RUNNER_MAX_USD_PER_DAY"
ENV_MAX_USD_PER_RUN = "BATCH_RUNNER_MAX_USD_PER_RUN"
ENV_WARN_AT_USD = "BATCH_RUNNER_WARN_AT_USD"
ENV_LOG_FORMAT = "BATCH_RUNNER_LOG_FORMAT"
ENV_CONFIG = "BATCH_RUNNER_CONFIG"  # the config file, as --config names it
LEASE_S = 60.0
CONFIG_FILE = "batch-runner.toml"  # in the working directory
LOG_FORMATS = ("text", "json")
PATH_CHARS = 200  # the most characters of a path a message quotes

#: fal's hosts (reference §1). One URL (--fal-url) replaces all of them, e.g. with the emulator.
FAL_QUEUE_URL = "https://queue.fal.run"
FAL_REST_URL = "https://rest.fal.ai"
FAL_CDN_URL = "https://v3.fal.media"
FAL_API_URL = "https://api.fal.ai/v1"

PROBE_CONCURRENCY = 8
#: A presigned object URL handed to fal must outlast the queue wait: 7 days is SigV4's longest lifetime
#: (AWS S3 docs, "Sharing objects with presigned URLs"), the same as our fal upload lifetime.
STORE_URL_LIFETIME_S = 7 * 24 * 3600
PROBE_TIMEOUT_S = 30.0

ENV_METRICS_PORT = "BATCH_RUNNER_METRICS_PORT"  # `--metrics-port`: off when unset; 0 picks a free port
ENV_METRICS_ADDR = "BATCH_RUNNER_METRICS_ADDR"
ENV_NOTIFY_URLS = "BATCH_RUNNER_NOTIFY_URLS"  # comma-separated webhook URLs
ENV_NOTIFY_SECRET = "BATCH_RUNNER_NOTIFY_SECRET"  # HMAC-SHA256 key of the signature header
ENV_NOTIFY_SECRET_FILE = "BATCH_RUNNER_NOTIFY_SECRET_FILE"  # the same key read from a file
ENV_NOTIFY_FORMAT = "BATCH_RUNNER_NOTIFY_FORMAT"  # json (default) or slack
ENV_NOTIFY_OUTAGE_AFTER_S = "BATCH_RUNNER_NOTIFY_OUTAGE_AFTER_S"
METRICS_ADDR = "127.0.0.1"
NOTIFY_FORMATS = ("json", "slack")
NOTIFY_OUTAGE_AFTER_S = 300.0


@dataclass(frozen=True)
class Key:
    """One setting: its TOML key, environment variable, kind, help, flag and default (for the docs).
    `field` names the Settings attribute `from_env` fills generically; None: read by hand there."""

    toml: str
    env: str
    kind: str  # text | path | db | int | number | usd | choice
    help: str
    flag: str = ""
    default: str = "none"
    field: str | None = None
    choices: tuple[str, ...] = ()


KEYS: tuple[Key, ...] = (
    Key("db", ENV_DB, "db", "job database: sqlite:///PATH, a file path or postgresql://…", "--db URL",
        "$XDG_DATA_HOME/batch-runner/batch-runner.db"),
    Key("prices", ENV_PRICES, "path", "your own price file, laid over the built-in table", "--prices FILE",
        "the built-in table"),
    Key("fal_prices", ENV_FAL_PRICES, "path", "fal's prices from `prices sync`", "prices sync -o FILE",
        "fal-prices.json beside the default database"),
    Key("fal_url", ENV_FAL_URL, "text", "one base URL for every fal call, e.g. an emulator", "--fal-url URL",
        "fal's real hosts"),
    Key("probe_concurrency", ENV_PROBE_CONCURRENCY, "int", "ffprobe processes at once", default="8",
        field="probe_concurrency"),
    Key("probe_timeout_s", ENV_PROBE_TIMEOUT_S, "number", "seconds before ffprobe is killed", default="30",
        field="probe_timeout_s"),
    Key("store_url_lifetime_s", ENV_STORE_URL_LIFETIME_S, "int", "seconds a presigned object-store URL handed to "
        "fal stays valid; must outlast the queue wait (SigV4: at most 604800)", default="604800 (7 days)",
        field="store_url_lifetime_s"),
    Key("lease_s", ENV_LEASE_S, "number", "seconds a worker's claim on a job lasts unrenewed", default="60",
        field="lease_s"),
    Key("max_usd_per_run", ENV_MAX_USD_PER_RUN, "usd", "a run's budget when neither --max-cost nor the manifest "
        "sets one", field="max_usd_per_run_micro"),
    Key("max_usd_per_day", ENV_MAX_USD_PER_DAY, "usd", "account budget per rolling day, every batch",
        field="max_usd_per_day_micro"),
    Key("warn_at_usd", ENV_WARN_AT_USD, "usd", "a run's default warning threshold", field="warn_at_micro"),
    Key("fal_key_file", ENV_FAL_KEY_FILE, "path", "a file holding the fal key (FAL_KEY wins when set)"),
    Key("fal_admin_key_file", ENV_FAL_ADMIN_KEY_FILE, "path", "a file holding the fal ADMIN key (FAL_ADMIN_KEY "
        "wins when set)"),
    Key("log_format", ENV_LOG_FORMAT, "choice", "log lines on stderr: text or json (one object a line)",
        "--log-format", "text", field="log_format", choices=LOG_FORMATS),
    Key("metrics_port", ENV_METRICS_PORT, "int", "serve Prometheus metrics on this port (0: any free port)",
        "--metrics-port PORT", "off"),
    Key("metrics_addr", ENV_METRICS_ADDR, "text", "the address the metrics server listens on", "--metrics-addr",
        METRICS_ADDR),
    Key("notify_urls", ENV_NOTIFY_URLS, "text", "webhook URLs for notifications, comma-separated"),
    Key("notify_secret_file", ENV_NOTIFY_SECRET_FILE, "path", "a file holding the webhooks' HMAC secret "
        "(BATCH_RUNNER_NOTIFY_SECRET wins when set)"),
    Key("notify_format", ENV_NOTIFY_FORMAT, "choice", "json (signed events) or slack (a text payload)",
        default="json", choices=NOTIFY_FORMATS),
    Key("notify_outage_after_s", ENV_NOTIFY_OUTAGE_AFTER_S, "number", "seconds fal must be unreachable before "
        "a notification", default="300"),
)  # fmt: skip
KEYS_BY_TOML = {k.toml: k for k in KEYS}

#: Secrets a config file must not hold (the file is easily shared, copied and committed).
SECRET_KEYS = {
    "fal_key": "fal_key_file",
    "fal_key_id": "fal_key_file",
    "fal_key_secret": "fal_key_file",
    "fal_admin_key": "fal_admin_key_file",
    "notify_secret": "notify_secret_file",
}

#: A kind's TOML types and the words for them in a message.
_FILE_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "text": ((str,), "a string"),
    "path": ((str,), "a path string"),
    "db": ((str,), "a URL or path string"),
    "choice": ((str,), "a string"),
    "int": ((int,), "a whole number"),
    "number": ((int, Decimal), "a number of seconds"),
    "usd": ((int, Decimal, str), 'a USD amount like 50.00 or "50.00"'),
}


class Secret:
    """A value that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class FalHosts:
    """Base URLs of fal's queue, REST (storage tokens), CDN (uploads) and platform APIs."""

    queue: str = FAL_QUEUE_URL
    rest: str = FAL_REST_URL
    cdn: str = FAL_CDN_URL
    api: str = FAL_API_URL

    @classmethod
    def for_url(cls, url: str | None) -> FalHosts:
        """fal's real hosts, or every host at one base URL (an emulator serves them all)."""
        if not url:
            return cls()
        base = url.rstrip("/")
        return cls(queue=base, rest=base, cdn=base, api=f"{base}/v1")

    @property
    def is_real_fal(self) -> bool:
        return self.queue == FAL_QUEUE_URL


def default_db_path(environ: Mapping[str, str]) -> Path:
    """$XDG_DATA_HOME/batch-runner/batch-runner.db, else ~/.local/share/batch-runner/…"""
    base = environ.get("XDG_DATA_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".local" / "share")
    return Path(base) / "batch-runner" / "batch-runner.db"


def _setting(environ: Mapping[str, str], name: str, parse: Any, default: Any, what: str) -> Any:
    """A positive value from the environment, or a ConfigError naming the variable."""
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise ConfigError(f"{name}={shorten(raw)} must be a positive {what}")
    return value


def _usd(raw: str) -> int:
    from ..domain import usd_to_micro

    return usd_to_micro(raw)


def _read_key(environ: Mapping[str, str], key: Key, default: Any) -> Any:
    """A generic key's value from its environment text (kinds text, path, int, number, usd, choice)."""
    raw = environ.get(key.env)
    if key.kind in ("int", "number", "usd"):
        parse: Any = {"int": int, "number": float, "usd": _usd}[key.kind]
        what = {"int": "whole number", "number": "number of seconds", "usd": "USD amount like 50.00"}[key.kind]
        return _setting(environ, key.env, parse, default, what)
    if not raw:
        return default
    if key.kind == "choice" and raw not in key.choices:
        raise ConfigError(f"{key.env}={shorten(raw)} must be one of {', '.join(key.choices)}")
    return Path(raw) if key.kind == "path" else raw


def secret_from_env(env: Mapping[str, str], name: str, file_name: str) -> Secret | None:
    """A secret from its variable, else from the file its `*_FILE` variable names (one trailing
    newline stripped). The variable wins over the file: whoever sets it for one command means it."""
    if env.get(name):
        return Secret(env[name])
    path = env.get(file_name)
    if not path:
        return None
    where = f"{file_name} {_named(Path(path))}"
    hint = f"put the key alone on one line in a file only you can read, or set {name} instead"
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or type(exc).__name__})", hint=hint) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: is not a text file", hint=hint) from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text.strip():
        raise ConfigError(f"{where}: the file is empty", hint=hint)
    if "\n" in text or text != text.strip():
        raise ConfigError(f"{where}: the key must be the file's only line, without spaces", hint=hint)
    return Secret(text)


def _named(path: Path) -> str:
    """A path as a message shows it: whole unless it is very long."""
    return shorten(path, PATH_CHARS)
