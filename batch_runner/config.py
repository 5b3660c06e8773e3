"""Settings: the only module that reads environment variables and the config file. Settings are
passed, not global.

Where a setting comes from, first found wins: a command-line flag, the environment, the TOML config
file (`--config FILE`, else ./batch-runner.toml, else $XDG_CONFIG_HOME/batch-runner/config.toml),
the default. The file's values are turned into their environment variables' text and laid under
the real environment, so `Settings.from_env` is the one place that parses a setting.

To add a setting: one `Key` row in `KEYS` and, when `field` is given, a `Settings` field of that
name with its default; `from_env` then reads it by its kind (text, path, int, number, usd,
choice), e.g. `Key("metrics_port", "BATCH_RUNNER_METRICS_PORT", "int", "…", "--metrics-port",
field="metrics_port")` with `metrics_port: int | None = None`. --help lists the variable by
itself; a test wants its row in the README's "Configuration" table. A secret never goes in the
file: name it in `SECRET_KEYS` (refused with a hint), add a `*_file` row (kind path) and read it
with `secret_from_env(env, "X", "X_FILE")`.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from .domain import is_remote
from .errors import ConfigError, shorten, type_name

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
PROBE_TIMEOUT_S = 30.0


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
)  # fmt: skip
KEYS_BY_TOML = {k.toml: k for k in KEYS}

#: Secrets a config file must not hold (the file is easily shared, copied and committed).
SECRET_KEYS = {
    "fal_key": "fal_key_file",
    "fal_key_id": "fal_key_file",
    "fal_key_secret": "fal_key_file",
    "fal_admin_key": "fal_admin_key_file",
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
    from .domain import usd_to_micro

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


def fal_key_from_env(env: Mapping[str, str]) -> Secret | None:
    """The key as fal's own Python client finds it (fal-client `auth.py`,
    `_resolve_env_or_colab_auth`): FAL_KEY, else FAL_KEY_ID and FAL_KEY_SECRET together, sent as
    `Key <id>:<secret>`. One of the pair alone is an error, never silently ignored. Then ours:
    FAL_KEY_FILE, a file holding the key (any key in the environment wins over it)."""
    if env.get(ENV_FAL_KEY):
        return Secret(env[ENV_FAL_KEY])
    key_id, secret = env.get(ENV_FAL_KEY_ID), env.get(ENV_FAL_KEY_SECRET)
    if key_id and secret:
        return Secret(f"{key_id}:{secret}")
    if key_id or secret:
        have, missing = (ENV_FAL_KEY_ID, ENV_FAL_KEY_SECRET) if key_id else (ENV_FAL_KEY_SECRET, ENV_FAL_KEY_ID)
        raise ConfigError(f"{have} is set but {missing} is not", hint="set both, or set FAL_KEY instead")
    return secret_from_env(env, ENV_FAL_KEY, ENV_FAL_KEY_FILE)


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with its source already resolved."""

    db_url: str
    db_is_default: bool = False  # neither --db nor BATCH_RUNNER_DB: the one location created on first use
    prices_path: Path | None = None
    fal_prices_path: Path | None = None  # fal's prices from the last `prices sync`; None: not used
    fal_url: str | None = None
    fal_key: Secret | None = None
    fal_admin_key: Secret | None = None  # for reconcile and resolve; FAL_KEY when it is not set
    probe_concurrency: int = PROBE_CONCURRENCY
    probe_timeout_s: float = PROBE_TIMEOUT_S
    lease_s: float = LEASE_S
    max_usd_per_day_micro: int | None = None  # account-wide, every batch, per rolling 24 h
    max_usd_per_run_micro: int | None = None  # a run's budget when neither --max-cost nor the manifest sets one
    warn_at_micro: int | None = None  # default warning threshold of a run
    log_format: str = "text"  # text | json
    config_path: Path | None = None  # the config file read, if any

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        named = env.get(ENV_DB)
        db = named or f"sqlite:///{default_db_path(env)}"
        prices = env.get(ENV_PRICES)
        defaults = {f.name: f.default for f in fields(cls)}
        generic = {k.field: _read_key(env, k, defaults[k.field]) for k in KEYS if k.field}
        return cls(
            db_url=normalize_db_url(db),
            db_is_default=not named,
            prices_path=Path(prices) if prices else None,
            fal_prices_path=Path(env[ENV_FAL_PRICES])
            if env.get(ENV_FAL_PRICES)
            else default_db_path(env).parent / FAL_PRICES_FILE,
            fal_url=env.get(ENV_FAL_URL) or None,
            fal_key=fal_key_from_env(env),
            fal_admin_key=secret_from_env(env, ENV_FAL_ADMIN_KEY, ENV_FAL_ADMIN_KEY_FILE),
            **generic,
        )

    @property
    def admin_key(self) -> Secret | None:
        """The key for fal's admin-only platform APIs: FAL_ADMIN_KEY, else FAL_KEY (an ADMIN key
        also runs models, docs: model-apis/authentication/key-based)."""
        return self.fal_admin_key or self.fal_key

    @property
    def hosts(self) -> FalHosts:
        return FalHosts.for_url(self.fal_url)

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with the non-None command-line options applied."""
        clean = {k: v for k, v in changes.items() if v is not None}
        if "fal_url" in clean and not is_remote(str(clean["fal_url"]), data_uri=False):
            raise ConfigError(f"--fal-url {shorten(str(clean['fal_url']))} must be an http(s) URL")
        if "db_url" in clean:
            clean["db_url"] = normalize_db_url(str(clean["db_url"]))
            clean.setdefault("db_is_default", False)  # a URL given on purpose is never created by itself
        return replace(self, **clean)


def normalize_db_url(value: str) -> str:
    """Accept a bare file path as a SQLite database; map postgres URLs to the psycopg 3 driver."""
    if "://" not in value:
        return f"sqlite:///{Path(value).expanduser().resolve()}"
    for prefix in ("postgres://", "postgresql://"):
        if value.startswith(prefix):
            return "postgresql+psycopg://" + value[len(prefix) :]
    return value


# ---------------------------------------------------------------------------- the config file


def load_settings(config: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment over the config file (flags are applied by the caller with
    `with_overrides`). `config` is --config: it must exist; the default files may be absent."""
    env = os.environ if environ is None else environ
    explicit = config or (Path(env[ENV_CONFIG]) if env.get(ENV_CONFIG) else None)
    path = find_config_file(explicit, env)
    file_env = read_config_file(path) if path else {}
    # An empty variable counts as unset (as click and from_env treat it), so it does not hide the file's value
    merged = {**file_env, **{k: v for k, v in env.items() if v != ""}}
    return replace(Settings.from_env(merged), config_path=path)


def find_config_file(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    """--config FILE (it must exist), else ./batch-runner.toml, else the XDG config folder's."""
    if explicit is not None:
        if not explicit.is_file():
            why = "is a folder" if explicit.is_dir() else "does not exist"
            raise ConfigError(f"config file {_named(explicit)} {why}", hint="check --config / " + ENV_CONFIG)
        return explicit
    xdg = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".config")
    for candidate in (Path(CONFIG_FILE), Path(xdg) / "batch-runner" / "config.toml"):
        if candidate.is_file():
            return candidate
    return None


def read_config_file(path: Path) -> dict[str, str]:
    """The file's settings as their environment variables' text, or a ConfigError at file:line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"config file {_named(path)}: cannot read it ({why})") from None
    try:
        data = tomllib.loads(text, parse_float=Decimal)  # money stays exact: 0.1 is Decimal("0.1")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{_named(path)}:{_toml_error(exc, text)}", hint="see https://toml.io") from None
    values = {}
    for name, value in data.items():
        checked = _file_value(path, text, name, value)
        values[KEYS_BY_TOML[name].env] = checked
    return values


def _toml_error(exc: tomllib.TOMLDecodeError, text: str) -> str:
    """`LINE: not valid TOML: WHAT (column N)` from tomllib's `WHAT (at line L, column N)` or
    `WHAT (at end of document)` (Python 3.11 gives the place only in the message)."""
    message = str(exc)
    found = re.search(r"\(at line (\d+), column (\d+)\)", message)
    if found:
        return f"{found.group(1)}: not valid TOML: {message[: found.start()].strip()} (column {found.group(2)})"
    line = max(text.count("\n") + (0 if text.endswith("\n") else 1), 1)
    return f"{line}: not valid TOML: {message.replace('(at end of document)', '(at the end)').strip()}"


def _file_value(path: Path, text: str, name: str, value: Any) -> str:
    """One key's value as its environment variable's text; unknown keys, secrets and wrong types refused."""
    where = f"{_named(path)}:{_line_of(text, name) or '?'}"
    if name in SECRET_KEYS:
        raise ConfigError(
            f"{where}: {name}: a secret is never read from the config file",
            hint=f"put it in a file only you can read and set {SECRET_KEYS[name]} = PATH, or set it in the environment",
        )
    key = KEYS_BY_TOML.get(name)
    if key is None:
        raise ConfigError(f"{where}: unknown key {shorten(name)}", hint=_did_you_mean(name))
    types, what = _FILE_TYPES[key.kind]
    if isinstance(value, bool) or not isinstance(value, types):
        raise ConfigError(
            f"{where}: {name} must be {what}, not {_toml_type(value)}", hint=f"e.g. {name} = {_example(key)}"
        )
    text_value = str(value)
    if key.kind == "choice" and text_value not in key.choices:
        raise ConfigError(f"{where}: {name} = {shorten(text_value)} is not one of {', '.join(key.choices)}")
    if key.field:  # the check the environment's value gets, named by the file's line
        try:
            _read_key({key.env: text_value}, key, None)
        except ConfigError as exc:
            rest = exc.message.split(" must ", 1)[-1]
            raise ConfigError(f"{where}: {name} must {rest}", hint=exc.hint) from None
    if key.kind == "path" or (key.kind == "db" and "://" not in text_value):
        # a relative path is relative to the config file's folder, wherever the command runs
        return str((path.parent / Path(text_value).expanduser()).resolve())
    return text_value


def _toml_type(value: Any) -> str:
    """TOML's word for a value's type."""
    if isinstance(value, Decimal):
        return "a decimal number"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    kind = type_name(value)
    return "a date or time" if kind == "a value of another kind" else kind


def _named(path: Path) -> str:
    """A path as a message shows it: whole unless it is very long."""
    return shorten(path, PATH_CHARS)


def _line_of(text: str, name: str) -> int | None:
    """The line where a top-level key or table is set (tomllib tells values, not lines)."""
    quoted = re.escape(name)
    pattern = re.compile(rf"""^\s*(\[+\s*)?(["']?){quoted}\2\s*[=.\]]""")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None


def _did_you_mean(name: str) -> str:
    """A hint naming the closest key (an environment variable's name finds its key too)."""
    by_env = {k.env.lower(): k.toml for k in KEYS}
    by_env.update({k.env.lower().removeprefix("batch_runner_"): k.toml for k in KEYS})
    lowered = name.lower()
    if lowered in by_env:
        return f'did you mean "{by_env[lowered]}"?'
    close = difflib.get_close_matches(lowered, list(KEYS_BY_TOML), n=1, cutoff=0.6)
    if close:
        return f'did you mean "{close[0]}"?'
    return 'the keys are listed in README "Configuration"'


def _example(key: Key) -> str:
    return {"int": "8", "number": "90", "usd": '"50.00"', "choice": f'"{key.choices[0] if key.choices else ""}"'}.get(
        key.kind, '"…"'
    )


def environment_help() -> str:
    """The --help lines that name every variable (from KEYS, so a new key shows up by itself)."""
    names = [f"{ENV_FAL_KEY} (or {ENV_FAL_KEY_ID} + {ENV_FAL_KEY_SECRET})", ENV_FAL_ADMIN_KEY]
    names += [f"{k.env} ({k.default})" if k.field and k.default != "none" else k.env for k in KEYS]
    lines, line = [], " "
    for name in [*names, ENV_CONFIG]:
        if len(line) + len(name) > 96:
            lines.append(line)
            line = " "
        line += f" {name},"
    return "\n".join([*lines, line.rstrip(",")])
