"""Settings know whether the job database is the default location (the only one created by itself)."""

from __future__ import annotations

from pathlib import Path

from batch_runner.config import Settings


def test_no_database_setting_means_the_default_location():
    settings = Settings.from_env({"HOME": "/home/u"})
    assert settings.db_is_default
    assert settings.db_url == "sqlite:////home/u/.local/share/batch-runner/batch-runner.db"
    assert Settings.from_env({"XDG_DATA_HOME": "/data", "BATCH_RUNNER_DB": ""}).db_is_default


def test_a_database_from_the_environment_is_not_the_default():
    settings = Settings.from_env({"HOME": "/home/u", "BATCH_RUNNER_DB": "/srv/jobs.db"})
    assert not settings.db_is_default and settings.db_url == "sqlite:////srv/jobs.db"


def test_db_option_is_not_the_default_even_when_it_names_the_default_path():
    settings = Settings.from_env({"HOME": "/home/u"})
    named = settings.with_overrides(db_url="/home/u/.local/share/batch-runner/batch-runner.db")
    assert not named.db_is_default


def test_other_overrides_keep_the_default_location():
    settings = Settings.from_env({"HOME": "/home/u"}).with_overrides(db_url=None, prices_path=Path("p.yaml"))
    assert settings.db_is_default


def test_settings_made_by_hand_name_their_database():
    assert not Settings(db_url="sqlite:////tmp/x.db").db_is_default


def test_the_key_is_found_as_fal_client_finds_it():
    import pytest

    from batch_runner.config import fal_key_from_env
    from batch_runner.errors import ConfigError

    assert fal_key_from_env({"FAL_KEY": "k", "FAL_KEY_ID": "i", "FAL_KEY_SECRET": "s"}).reveal() == "k"
    assert fal_key_from_env({"FAL_KEY_ID": "i", "FAL_KEY_SECRET": "s"}).reveal() == "i:s"
    assert fal_key_from_env({}) is None
    for half in ({"FAL_KEY_ID": "i"}, {"FAL_KEY_SECRET": "super-secret"}):
        with pytest.raises(ConfigError) as err:
            fal_key_from_env(half)
        assert "is set but" in err.value.message and "super-secret" not in err.value.message


def test_fal_key_file_gives_the_key_without_its_trailing_newline(tmp_path: Path):
    key_file = tmp_path / "fal.key"
    key_file.write_text("id:secret-123\n")
    settings = Settings.from_env({"HOME": "/h", "FAL_KEY_FILE": str(key_file)})
    assert settings.fal_key is not None and settings.fal_key.reveal() == "id:secret-123"
    key_file.write_bytes(b"id:secret-123\r\n")
    assert Settings.from_env({"HOME": "/h", "FAL_KEY_FILE": str(key_file)}).fal_key.reveal() == "id:secret-123"
    admin = tmp_path / "admin.key"
    admin.write_text("admin-456")  # no newline at all is fine too
    settings = Settings.from_env({"HOME": "/h", "FAL_ADMIN_KEY_FILE": str(admin)})
    assert settings.fal_admin_key.reveal() == "admin-456" and settings.fal_key is None


def test_a_key_in_the_environment_wins_over_the_key_file(tmp_path: Path):
    key_file = tmp_path / "fal.key"
    key_file.write_text("from-file\n")
    env = {"HOME": "/h", "FAL_KEY_FILE": str(key_file), "FAL_ADMIN_KEY_FILE": str(key_file)}
    settings = Settings.from_env({**env, "FAL_KEY": "from-env", "FAL_ADMIN_KEY": "admin-env"})
    assert settings.fal_key.reveal() == "from-env" and settings.fal_admin_key.reveal() == "admin-env"
    pair = Settings.from_env({**env, "FAL_KEY_ID": "i", "FAL_KEY_SECRET": "s"})
    assert pair.fal_key.reveal() == "i:s"
    # a missing key file is not even looked at when the variable is set
    assert Settings.from_env({"HOME": "/h", "FAL_KEY": "k", "FAL_KEY_FILE": "/nowhere"}).fal_key.reveal() == "k"


def test_a_bad_key_file_is_a_clear_error_that_never_shows_its_contents(tmp_path: Path):
    import pytest

    from batch_runner.errors import ConfigError

    cases = {
        "empty": (b"", "the file is empty"),
        "blank": (b"\n", "the file is empty"),
        "two-lines": (b"sk-first-secret\nsk-second-secret\n", "only line"),
        "spaced": (b" sk-padded-secret\n", "only line"),
        "binary": (b"\xff\xfe sk-binary-secret", "not a text file"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ConfigError) as err:
            Settings.from_env({"HOME": "/h", "FAL_KEY_FILE": str(path)})
        text = str(err.value)
        assert expected in text and f"FAL_KEY_FILE {path}" in text and "sk-" not in text, name
        assert err.value.exit_code == 3
    for missing in (tmp_path / "nowhere.key", tmp_path):  # absent, and a folder
        with pytest.raises(ConfigError, match="cannot read it") as err:
            Settings.from_env({"HOME": "/h", "FAL_ADMIN_KEY_FILE": str(missing)})
        assert "FAL_ADMIN_KEY_FILE" in err.value.message and "FAL_ADMIN_KEY instead" in err.value.hint


def test_the_config_file_names_a_key_file_relative_to_itself(tmp_path: Path):
    from batch_runner.config import load_settings

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "fal.key").write_text("from-the-file\n")
    (tmp_path / "etc" / "c.toml").write_text('fal_key_file = "fal.key"\n')
    settings = load_settings(tmp_path / "etc" / "c.toml", {"HOME": str(tmp_path)})
    assert settings.fal_key.reveal() == "from-the-file"
    assert load_settings(tmp_path / "etc" / "c.toml", {"HOME": "/h", "FAL_KEY": "env"}).fal_key.reveal() == "env"
