"""The config file and JSON logs through the real CLI: flag > environment > file > default, one
`Error:` line with exit 3 for a bad file, and a run whose JSON log lines name their job."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from batch_runner.cli import cli
from tests.integration.run_helpers import make_bench

KEY = "cfg-test-key-0123456789"


def _invoke(args: list[str], env: dict[str, str | None] | None = None):
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_db_flag_beats_the_environment_beats_the_config_file(tmp_path: Path):
    config = tmp_path / "batch-runner.toml"
    config.write_text('db = "from-file.db"\n')  # relative to the file's folder
    from_env, from_flag = tmp_path / "from-env.db", tmp_path / "from-flag.db"
    env = {"BATCH_RUNNER_DB": str(from_env)}
    cfg = ["--config", str(config)]

    assert _invoke([*cfg, "--db", str(from_flag), "db", "upgrade"], env)[0] == 0
    assert from_flag.exists() and not from_env.exists() and not (tmp_path / "from-file.db").exists()
    assert _invoke([*cfg, "db", "upgrade"], env)[0] == 0
    assert from_env.exists() and not (tmp_path / "from-file.db").exists()
    assert _invoke([*cfg, "db", "upgrade"], {"BATCH_RUNNER_DB": None})[0] == 0
    assert (tmp_path / "from-file.db").exists()


def test_the_working_directory_config_is_found_without_a_flag(tmp_path: Path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "batch-runner.toml").write_text(f'db = "{tmp_path / "cwd.db"}"\n')
    monkeypatch.chdir(work)
    code, _, err = _invoke(["db", "upgrade"], {"BATCH_RUNNER_DB": None})
    assert code == 0, err
    assert (tmp_path / "cwd.db").exists()


def test_a_bad_config_file_is_one_error_line_with_exit_3(tmp_path: Path):
    config = tmp_path / "c.toml"
    config.write_text('db = "x.db"\nlease_seconds = 90\n')
    code, out, err = _invoke(["--config", str(config), "status"])
    assert code == 3 and out == ""
    assert err == f"Error: {config}:2: unknown key 'lease_seconds' (did you mean \"lease_s\"?)\n"

    config.write_text("lease_s = [1, 2\n")
    code, out, err = _invoke(["--config", str(config), "status"])
    assert code == 3 and out == "" and err.startswith(f"Error: {config}:1: not valid TOML: ")
    assert len(err.splitlines()) == 1 and "Traceback" not in err

    code, out, err = _invoke(["--config", str(tmp_path / "missing.toml"), "status"])
    assert code == 3 and out == "" and "missing.toml does not exist" in err


def test_a_key_in_the_config_file_is_refused_and_never_echoed(tmp_path: Path):
    config = tmp_path / "c.toml"
    config.write_text(f'fal_key = "{KEY}"\n')
    code, out, err = _invoke(["--config", str(config), "status"])
    assert code == 3 and out == ""
    assert "fal_key: a secret is never read from the config file" in err and "fal_key_file = PATH" in err
    assert KEY not in err


def test_a_run_configured_by_file_logs_json_lines_that_name_their_job(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(faults="stream_unavailable=1"), clips=1)
    (tmp_path / "fal.key").write_text(KEY + "\n")
    config = tmp_path / "c.toml"
    config.write_text(
        f'db = "{bench.db_url}"\nfal_url = "{bench.emulator.url}"\nfal_key_file = "fal.key"\nlog_format = "json"\n'
    )
    env: dict[str, str | None] = {"BATCH_RUNNER_DB": None, "BATCH_RUNNER_FAL_URL": None, "FAL_KEY": None}
    code, out, err = _invoke(["--config", str(config), "-v", "run", str(bench.manifest), "--json"], env)
    assert code == 0, err  # without the key from fal_key_file, `run` refuses with exit 3
    assert json.loads(out)["jobs"] == {"succeeded": 2}
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert lines[0]["event"].startswith(f"settings from the config file {config}")
    polling = [line for line in lines if "status stream unavailable" in line["event"]]
    assert len(polling) == 2 and len({line["job"] for line in polling}) == 2
    [batch_id] = bench.sql("select id from batches where name = 'b'")[0]
    [run_name] = bench.sql("select name from runs")[0]
    assert all(line["batch"] == batch_id and line["run"] == run_name and line["level"] == "info" for line in polling)
    assert all(line["logger"] == "batch_runner.worker" and line["time"].endswith("Z") for line in polling)
    requests = dict(bench.sql("select job_id, request_id from attempts"))
    assert {line["job"]: line["request_id"] for line in polling} == requests  # bound as the submit is answered
    assert KEY not in out + err


def test_prices_sync_writes_where_the_config_file_says_unless_the_environment_says_otherwise(tmp_path: Path, emu):
    config = tmp_path / "c.toml"
    config.write_text(f'fal_url = "{emu.url}"\nfal_prices = "synced/from-file.json"\n')
    env: dict[str, str | None] = {"FAL_KEY": "k", "BATCH_RUNNER_FAL_PRICES": None}
    code, _, err = _invoke(["--config", str(config), "prices", "sync"], env)
    assert code == 0, err
    assert (tmp_path / "synced" / "from-file.json").is_file()
    env["BATCH_RUNNER_FAL_PRICES"] = str(tmp_path / "from-env.json")
    assert _invoke(["--config", str(config), "prices", "sync"], env)[0] == 0
    assert (tmp_path / "from-env.json").is_file()
    code, _, err = _invoke(["--config", str(config), "prices", "sync", "-o", str(tmp_path / "flag.json")], env)
    assert code == 0 and (tmp_path / "flag.json").is_file()
