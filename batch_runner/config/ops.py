"""The operations settings: the metrics endpoint and the notification webhooks (both off unless set)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..domain import is_remote
from ..errors import ConfigError, shorten
from .keys import (
    ENV_METRICS_ADDR,
    ENV_METRICS_PORT,
    ENV_NOTIFY_FORMAT,
    ENV_NOTIFY_OUTAGE_AFTER_S,
    ENV_NOTIFY_SECRET,
    ENV_NOTIFY_SECRET_FILE,
    ENV_NOTIFY_URLS,
    METRICS_ADDR,
    NOTIFY_FORMATS,
    NOTIFY_OUTAGE_AFTER_S,
    Secret,
    _setting,
    secret_from_env,
)


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
        notify_secret=secret_from_env(env, ENV_NOTIFY_SECRET, ENV_NOTIFY_SECRET_FILE),
        notify_format=fmt,
        notify_outage_after_s=_setting(
            env, ENV_NOTIFY_OUTAGE_AFTER_S, float, NOTIFY_OUTAGE_AFTER_S, "number of seconds"
        ),
    )
