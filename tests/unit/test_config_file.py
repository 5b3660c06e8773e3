"""The TOML config file: where it is found, what it may set, how it loses to the environment,
and the errors it gives (file:line, did-you-mean, expected type, secrets refused)."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_runner.config import KEYS, Settings, load_settings
from batch_runner.errors import ConfigError

FULL = """\
# every kind of key
db = "jobs.db"
fal_url = "http://127.0.0.1:9999"
prices = "my-prices.yaml"
probe_concurrency = 3
probe_timeout_s = 12.5
lease_s = 90
max_usd_per_run = 0.1
max_usd_per_day = "75.50"
warn_at_usd = 40
log_format = "json"
"""


def _write(folder: Path, text: str, name: str = "batch-runner.toml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg"), **extra}


def _error(path: Path, tmp_path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load_settings(path, _env(tmp_path))
    return err.value


def test_every_kind_of_key_reaches_the_settings(tmp_path: Path):
    path = _write(tmp_path / "etc", FULL)
    s = load_settings(path, _env(tmp_path))
    assert s.config_path == path
    assert s.db_url == f"sqlite:///{tmp_path / 'etc' / 'jobs.db'}" and not s.db_is_default  # relative to the file
    assert s.prices_path == tmp_path / "etc" / "my-prices.yaml"
    assert s.fal_url == "http://127.0.0.1:9999"
    assert (s.probe_concurrency, s.probe_timeout_s, s.lease_s) == (3, 12.5, 90.0)
    # money is exact: TOML's 0.1 is read as a decimal, never a float
    assert (s.max_usd_per_run_micro, s.max_usd_per_day_micro, s.warn_at_micro) == (100_000, 75_500_000, 40_000_000)
    assert s.log_format == "json"


def test_the_environment_beats_the_file_and_the_file_beats_the_default(tmp_path: Path):
    path = _write(tmp_path, FULL)
    env = _env(
        tmp_path,
        BATCH_RUNNER_DB="postgresql://u@h/jobs",
        BATCH_RUNNER_LEASE_S="30",
        BATCH_RUNNER_PROBE_TIMEOUT_S="5",
        BATCH_RUNNER_MAX_USD_PER_DAY="10",
        BATCH_RUNNER_FAL_URL="",  # empty counts as unset: the file's value stands
    )
    s = load_settings(path, env)
    assert s.db_url == "postgresql+psycopg://u@h/jobs"
    assert (s.lease_s, s.probe_timeout_s, s.max_usd_per_day_micro) == (30.0, 5.0, 10_000_000)
    assert s.probe_concurrency == 3 and s.fal_url == "http://127.0.0.1:9999"  # not in the environment: the file's
    assert s.max_usd_per_run_micro == 100_000
    defaults = load_settings(_write(tmp_path / "empty", ""), _env(tmp_path))
    assert (defaults.lease_s, defaults.probe_concurrency, defaults.max_usd_per_run_micro) == (60.0, 8, None)
    assert defaults.db_is_default and defaults.log_format == "text"


def test_flags_beat_the_environment_and_the_file(tmp_path: Path):
    path = _write(tmp_path, FULL)
    s = load_settings(path, _env(tmp_path, BATCH_RUNNER_FAL_URL="http://127.0.0.1:1")).with_overrides(
        fal_url="http://127.0.0.1:2", log_format="text"
    )
    assert s.fal_url == "http://127.0.0.1:2" and s.log_format == "text"


def test_the_working_directory_file_comes_before_the_xdg_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    xdg = _write(tmp_path / "xdg" / "batch-runner", "lease_s = 7", name="config.toml")
    assert load_settings(None, _env(tmp_path)).config_path == xdg
    assert load_settings(None, _env(tmp_path)).lease_s == 7.0
    _write(tmp_path, "lease_s = 8")
    s = load_settings(None, _env(tmp_path))
    assert s.config_path == Path("batch-runner.toml") and s.lease_s == 8.0
    home = _write(tmp_path / "home" / ".config" / "batch-runner", "lease_s = 9", name="config.toml")
    (tmp_path / "batch-runner.toml").unlink()
    no_xdg = {"HOME": str(tmp_path / "home")}
    assert load_settings(None, no_xdg).config_path == home  # ~/.config when XDG_CONFIG_HOME is unset


def test_no_config_file_anywhere_is_fine_but_a_named_one_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert load_settings(None, _env(tmp_path)).config_path is None
    err = _error(tmp_path / "nope.toml", tmp_path)
    assert "nope.toml" in err.message and "does not exist" in err.message and err.exit_code == 3
    assert "is a folder" in _error(tmp_path, tmp_path).message
    env = _env(tmp_path, BATCH_RUNNER_CONFIG=str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"gone\.toml"):
        load_settings(None, env)


def test_an_unknown_key_names_the_file_line_and_the_closest_key(tmp_path: Path):
    err = _error(_write(tmp_path, 'db = "x.db"\n\nlese_s = 90\n'), tmp_path)
    assert err.message.endswith("batch-runner.toml:3: unknown key 'lese_s'")
    assert err.hint == 'did you mean "lease_s"?'
    err = _error(_write(tmp_path, 'BATCH_RUNNER_DB = "x.db"\n'), tmp_path)
    assert ":1: unknown key" in err.message and err.hint == 'did you mean "db"?'
    err = _error(_write(tmp_path, "[server]\nurl = 'http://x'\n"), tmp_path)  # a table is a key too
    assert ":1: unknown key 'server'" in err.message and "README" in err.user_hint


def test_a_wrong_type_names_the_key_and_the_type_it_wants(tmp_path: Path):
    err = _error(_write(tmp_path, 'lease_s = "90"\n'), tmp_path)
    assert "lease_s must be a number of seconds, not a string" in err.message and err.hint == "e.g. lease_s = 90"
    err = _error(_write(tmp_path, "\nprobe_concurrency = 2.5\n"), tmp_path)
    assert ":2: probe_concurrency must be a whole number, not a decimal number" in err.message
    assert "must be a string, not a boolean" in _error(_write(tmp_path, "fal_url = true\n"), tmp_path).message
    err = _error(_write(tmp_path, 'log_format = "xml"\n'), tmp_path)
    assert "log_format = 'xml' is not one of text, json" in err.message
    err = _error(_write(tmp_path, "lease_s = -5\n"), tmp_path)  # the same check as the environment's
    assert "must be a positive number of seconds" in err.message


def test_malformed_toml_is_one_line_with_file_and_line(tmp_path: Path):
    err = _error(_write(tmp_path, 'db = "x.db"\nlease_s = = 3\n'), tmp_path)
    assert "batch-runner.toml:2: not valid TOML" in err.message and "\n" not in err.message
    assert err.exit_code == 3


@pytest.mark.parametrize("key", ["fal_key", "fal_admin_key", "fal_key_secret"])
def test_a_secret_in_the_config_file_is_refused_without_quoting_it(tmp_path: Path, key: str):
    err = _error(_write(tmp_path, f'lease_s = 9\n{key} = "sk-live-very-secret"\n'), tmp_path)
    assert f":2: {key}: a secret is never read from the config file" in err.message
    assert "_file = PATH" in err.hint and "environment" in err.hint
    assert "very-secret" not in str(err)


def test_every_key_is_documented_in_the_readme_configuration_table():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for key in KEYS:
        assert f"| `{key.toml}` |" in section and f"`{key.env}`" in section, key.toml


def test_settings_from_the_environment_alone_read_no_file():
    assert Settings.from_env({"HOME": "/nowhere"}).config_path is None


def test_the_log_format_comes_from_the_environment_too_and_is_checked(tmp_path: Path):
    path = _write(tmp_path, 'log_format = "text"\n')
    assert load_settings(path, _env(tmp_path, BATCH_RUNNER_LOG_FORMAT="json")).log_format == "json"
    with pytest.raises(ConfigError, match=r"BATCH_RUNNER_LOG_FORMAT='xml' must be one of text, json") as err:
        load_settings(path, _env(tmp_path, BATCH_RUNNER_LOG_FORMAT="xml"))
    assert err.value.exit_code == 3


def test_metrics_and_notification_keys_come_from_the_file_under_the_environment(tmp_path: Path):
    secret = _write(tmp_path, "s3cr3t\n", name="hook.secret")
    path = _write(
        tmp_path,
        'metrics_port = 0\nnotify_urls = "http://a.example/h, http://b.example/h"\nnotify_format = "slack"\n'
        'notify_outage_after_s = 45\nnotify_secret_file = "hook.secret"\n',
    )
    ops = load_settings(path, _env(tmp_path)).ops
    assert ops.metrics_port == 0 and ops.notify_format == "slack" and ops.notify_outage_after_s == 45
    assert ops.notify_urls == ("http://a.example/h", "http://b.example/h")
    assert ops.notify_secret is not None and ops.notify_secret.reveal() == "s3cr3t" and secret.is_file()
    env = {**_env(tmp_path), "BATCH_RUNNER_NOTIFY_FORMAT": "json", "BATCH_RUNNER_NOTIFY_SECRET": "from-env"}
    ops = load_settings(path, env).ops
    assert ops.notify_format == "json" and ops.notify_secret is not None and ops.notify_secret.reveal() == "from-env"


def test_a_notification_secret_in_the_file_is_refused_without_quoting_it(tmp_path: Path):
    err = _error(_write(tmp_path, 'notify_secret = "hunter2"\n'), tmp_path)
    assert "hunter2" not in err.message + err.user_hint and "notify_secret_file" in err.user_hint
