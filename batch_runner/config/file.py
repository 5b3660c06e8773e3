"""The TOML config file: where it is found, and its keys checked and turned into their environment
variables' text (laid under the real environment by `load_settings`)."""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..errors import ConfigError, shorten, type_name
from .keys import (
    _FILE_TYPES,
    CONFIG_FILE,
    ENV_CONFIG,
    ENV_FAL_ADMIN_KEY,
    ENV_FAL_KEY,
    ENV_FAL_KEY_ID,
    ENV_FAL_KEY_SECRET,
    ENV_NOTIFY_SECRET,
    KEYS,
    KEYS_BY_TOML,
    SECRET_KEYS,
    Key,
    _named,
    _read_key,
)
from .settings import (
    Settings,
)


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
    names = [f"{ENV_FAL_KEY} (or {ENV_FAL_KEY_ID} + {ENV_FAL_KEY_SECRET})", ENV_FAL_ADMIN_KEY, ENV_NOTIFY_SECRET]
    names += [f"{k.env} ({k.default})" if k.field and k.default != "none" else k.env for k in KEYS]
    lines, line = [], " "
    for name in [*names, ENV_CONFIG]:
        if len(line) + len(name) > 96:
            lines.append(line)
            line = " "
        line += f" {name},"
    return "\n".join([*lines, line.rstrip(",")])
