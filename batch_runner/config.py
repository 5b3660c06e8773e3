"""Settings: the only module that reads environment variables. Settings are passed, not global."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .domain import is_remote

ENV_DB = "BATCH_RUNNER_DB"
ENV_PRICES = "BATCH_RUNNER_PRICES"
ENV_FAL_PRICES = "BATCH_RUNNER_FAL_PRICES"  # the file `prices sync` writes and `plan` reads
FAL_PRICES_FILE = "fal-prices.json"
ENV_FAL_URL = "BATCH_RUNNER_FAL_URL"
ENV_PROBE_CONCURRENCY = "BATCH_RUNNER_PROBE_CONCURRENCY"
ENV_PROBE_TIMEOUT_S = "BATCH_RUNNER_PROBE_TIMEOUT_S"
ENV_FAL_KEY = "FAL_KEY"
ENV_FAL_KEY_ID, ENV_FAL_KEY_SECRET = "FAL_KEY_ID", "FAL_KEY_SECRET"  # fal-client auth.py: `Key id:secret`
ENV_FAL_ADMIN_KEY = "FAL_ADMIN_KEY"  # an ADMIN-scope key for fal's usage, request listing and billing events
ENV_LEASE_S = "BATCH_RUNNER_LEASE_S"
ENV_MAX_USD_PER_DAY = "BATCH_RUNNER_MAX_USD_PER_DAY"
ENV_MAX_USD_PER_RUN = "BATCH_RUNNER_MAX_USD_PER_RUN"
ENV_WARN_AT_USD = "BATCH_RUNNER_WARN_AT_USD"
LEASE_S = 60.0

#: fal's hosts (reference §1). One URL (--fal-url) replaces all of them, e.g. with the emulator.
FAL_QUEUE_URL = "https://queue.fal.run"
FAL_REST_URL = "https://rest.fal.ai"
FAL_CDN_URL = "https://v3.fal.media"
FAL_API_URL = "https://api.fal.ai/v1"

PROBE_CONCURRENCY = 8
PROBE_TIMEOUT_S = 30.0


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
        from .errors import ConfigError

        raise ConfigError(f"{name}={raw!r} must be a positive {what}")
    return value


def _usd(raw: str) -> int:
    from .domain import usd_to_micro

    return usd_to_micro(raw)


def fal_key_from_env(env: Mapping[str, str]) -> Secret | None:
    """The key as fal's own Python client finds it (fal-client `auth.py`,
    `_resolve_env_or_colab_auth`): FAL_KEY, else FAL_KEY_ID and FAL_KEY_SECRET together, sent as
    `Key <id>:<secret>`. One of the pair alone is an error, never silently ignored."""
    if env.get(ENV_FAL_KEY):
        return Secret(env[ENV_FAL_KEY])
    key_id, secret = env.get(ENV_FAL_KEY_ID), env.get(ENV_FAL_KEY_SECRET)
    if key_id and secret:
        return Secret(f"{key_id}:{secret}")
    if key_id or secret:
        have, missing = (ENV_FAL_KEY_ID, ENV_FAL_KEY_SECRET) if key_id else (ENV_FAL_KEY_SECRET, ENV_FAL_KEY_ID)
        from .errors import ConfigError

        raise ConfigError(f"{have} is set but {missing} is not", hint="set both, or set FAL_KEY instead")
    return None


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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        named = env.get(ENV_DB)
        db = named or f"sqlite:///{default_db_path(env)}"
        prices = env.get(ENV_PRICES)
        return cls(
            db_url=normalize_db_url(db),
            db_is_default=not named,
            prices_path=Path(prices) if prices else None,
            fal_prices_path=Path(env[ENV_FAL_PRICES])
            if env.get(ENV_FAL_PRICES)
            else default_db_path(env).parent / FAL_PRICES_FILE,
            fal_url=env.get(ENV_FAL_URL) or None,
            fal_key=fal_key_from_env(env),
            fal_admin_key=Secret(env[ENV_FAL_ADMIN_KEY]) if env.get(ENV_FAL_ADMIN_KEY) else None,
            probe_concurrency=_setting(env, ENV_PROBE_CONCURRENCY, int, PROBE_CONCURRENCY, "whole number"),
            probe_timeout_s=_setting(env, ENV_PROBE_TIMEOUT_S, float, PROBE_TIMEOUT_S, "number of seconds"),
            lease_s=_setting(env, ENV_LEASE_S, float, LEASE_S, "number of seconds"),
            max_usd_per_day_micro=_setting(env, ENV_MAX_USD_PER_DAY, _usd, None, "USD amount like 50.00"),
            warn_at_micro=_setting(env, ENV_WARN_AT_USD, _usd, None, "USD amount like 50.00"),
            max_usd_per_run_micro=_setting(env, ENV_MAX_USD_PER_RUN, _usd, None, "USD amount like 50.00"),
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
            from .errors import ConfigError

            raise ConfigError(f"--fal-url {clean['fal_url']!r} must be an http(s) URL")
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


# --------------------------------------------------------------------------- operations: metrics, notifications

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
class OpsSettings:
    """Metrics endpoint and notification webhooks (both off unless configured)."""

    metrics_port: int | None = None
    metrics_addr: str = METRICS_ADDR
    notify_urls: tuple[str, ...] = ()
    notify_secret: Secret | None = None
    notify_format: str = "json"
    notify_outage_after_s: float = NOTIFY_OUTAGE_AFTER_S


def ops_from_env(environ: Mapping[str, str] | None = None) -> OpsSettings:
    """The operations settings from the environment; a bad value is a ConfigError naming its variable."""
    from .errors import ConfigError, shorten

    env = os.environ if environ is None else environ
    port_raw = env.get(ENV_METRICS_PORT, "")
    port: int | None = None
    if port_raw:
        port = int(port_raw) if port_raw.isdigit() else -1
        if not 0 <= port <= 65535:
            raise ConfigError(f"{ENV_METRICS_PORT}={shorten(port_raw)} must be a port number from 0 to 65535")
    urls = tuple(u.strip() for u in env.get(ENV_NOTIFY_URLS, "").split(",") if u.strip())
    bad = [u for u in urls if not is_remote(u, data_uri=False)]
    if bad:
        raise ConfigError(f"{ENV_NOTIFY_URLS}: {shorten(bad[0].split('?')[0])} is not an http(s) URL")
    fmt = env.get(ENV_NOTIFY_FORMAT) or "json"
    if fmt not in NOTIFY_FORMATS:
        raise ConfigError(f"{ENV_NOTIFY_FORMAT}={shorten(fmt)} must be one of {', '.join(NOTIFY_FORMATS)}")
    return OpsSettings(
        metrics_port=port,
        metrics_addr=env.get(ENV_METRICS_ADDR) or METRICS_ADDR,
        notify_urls=urls,
        notify_secret=_notify_secret(env),
        notify_format=fmt,
        notify_outage_after_s=_setting(
            env, ENV_NOTIFY_OUTAGE_AFTER_S, float, NOTIFY_OUTAGE_AFTER_S, "number of seconds"
        ),
    )


def _notify_secret(env: Mapping[str, str]) -> Secret | None:
    """BATCH_RUNNER_NOTIFY_SECRET, else the file BATCH_RUNNER_NOTIFY_SECRET_FILE names (stripped)."""
    from .errors import ConfigError, shorten

    if env.get(ENV_NOTIFY_SECRET):
        return Secret(env[ENV_NOTIFY_SECRET])
    path = env.get(ENV_NOTIFY_SECRET_FILE)
    if not path:
        return None
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{ENV_NOTIFY_SECRET_FILE}: cannot read {shorten(path)}: {exc.strerror}",
            hint="point it at a readable file holding the secret",
        ) from exc
    if not value:
        raise ConfigError(f"{ENV_NOTIFY_SECRET_FILE}: {shorten(path)} is empty")
    return Secret(value)
