"""Settings: every value resolved from one environment mapping (the real one over the config file)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..domain import is_remote
from ..errors import ConfigError, shorten
from .keys import (
    ENV_DB,
    ENV_FAL_ADMIN_KEY,
    ENV_FAL_ADMIN_KEY_FILE,
    ENV_FAL_KEY,
    ENV_FAL_KEY_FILE,
    ENV_FAL_KEY_ID,
    ENV_FAL_KEY_SECRET,
    ENV_FAL_PRICES,
    ENV_FAL_URL,
    ENV_PRICES,
    FAL_PRICES_FILE,
    KEYS,
    LEASE_S,
    PROBE_CONCURRENCY,
    PROBE_TIMEOUT_S,
    STORE_URL_LIFETIME_S,
    FalHosts,
    Secret,
    _read_key,
    default_db_path,
    secret_from_env,
)
from .ops import (
    OpsSettings,
    ops_from_env,
)


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
    store_url_lifetime_s: int = STORE_URL_LIFETIME_S  # presigned object URLs handed to fal
    max_usd_per_day_micro: int | None = None  # account-wide, every batch, per rolling 24 h
    max_usd_per_run_micro: int | None = None  # a run's budget when neither --max-cost nor the manifest sets one
    warn_at_micro: int | None = None  # default warning threshold of a run
    log_format: str = "text"  # text | json
    config_path: Path | None = None  # the config file read, if any
    ops: OpsSettings = field(default_factory=OpsSettings)  # metrics and notifications

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
            ops=ops_from_env(env),
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
