"""Settings: the only package that reads environment variables and the config file. Settings are
passed, not global. `keys` names every setting, `settings` resolves them, `file` reads the TOML
file, `ops` holds the metrics and notification settings.

Where a setting comes from, first found wins: a command-line flag, the environment, the TOML config
file (`--config FILE`, else ./batch-runner.toml, else $XDG_CONFIG_HOME/batch-runner/config.toml),
the default. The file's values are turned into their environment variables' text and laid under
the real environment, so `Settings.from_env` is the one place that parses a setting.

To add a setting: one `Key` row in `keys.KEYS` and, when `field` is given, a `Settings` field of that
name with its default; `from_env` then reads it by its kind (text, path, int, number, usd,
choice), e.g. `Key("metrics_port", "BATCH_RUNNER_METRICS_PORT", "int", "…", "--metrics-port",
field="metrics_port")` with `metrics_port: int | None = None`. --help lists the variable by
itself; a test wants its row in the README's "Configuration" table. A secret never goes in the
file: name it in `SECRET_KEYS` (refused with a hint), add a `*_file` row (kind path) and read it
with `secret_from_env(env, "X", "X_FILE")`.
"""

from .file import environment_help, find_config_file, load_settings, read_config_file
from .keys import (
    CONFIG_FILE,
    ENV_CONFIG,
    ENV_DB,
    ENV_FAL_ADMIN_KEY,
    ENV_FAL_KEY,
    ENV_FAL_PRICES,
    ENV_FAL_URL,
    ENV_LOG_FORMAT,
    ENV_PRICES,
    KEYS,
    LOG_FORMATS,
    FalHosts,
    Key,
    Secret,
    default_db_path,
    secret_from_env,
)
from .ops import OpsSettings, ops_from_env
from .settings import Settings, fal_key_from_env, normalize_db_url

__all__ = [
    "CONFIG_FILE",
    "ENV_CONFIG",
    "ENV_DB",
    "ENV_FAL_ADMIN_KEY",
    "ENV_FAL_KEY",
    "ENV_FAL_PRICES",
    "ENV_FAL_URL",
    "ENV_LOG_FORMAT",
    "ENV_PRICES",
    "KEYS",
    "LOG_FORMATS",
    "FalHosts",
    "Key",
    "OpsSettings",
    "Secret",
    "Settings",
    "default_db_path",
    "environment_help",
    "fal_key_from_env",
    "find_config_file",
    "load_settings",
    "normalize_db_url",
    "ops_from_env",
    "read_config_file",
    "secret_from_env",
]
