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
