"""`batch-runner emulator serve` as a user runs it, and the --fal-url setting."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from batch_runner.config import FalHosts, Settings


def test_serve_prints_its_url_serves_and_stops_on_ctrl_c(tmp_path):
    exe = Path(sys.executable).parent / "batch-runner"
    proc = subprocess.Popen(
        [str(exe), "emulator", "serve", "--port", "0", "--speed", "100", "--faults", "rate_limit=0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        health = httpx.get(f"{url}/_emulator/health", timeout=10).json()
        assert health["emulator"] is True and health["speed"] == 100
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        assert proc.returncode == 0
        assert "nothing real is called" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_refuses_a_bad_fault_spec():
    exe = Path(sys.executable).parent / "batch-runner"
    proc = subprocess.run(
        [str(exe), "emulator", "serve", "--faults", "meteor=1"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3 and proc.stdout == ""
    assert proc.stderr.startswith("Error: --faults: unknown fault 'meteor'")


def test_fal_url_points_every_fal_host_at_one_base_url():
    real = FalHosts.for_url(None)
    assert (real.queue, real.rest, real.cdn, real.api) == (
        "https://queue.fal.run",
        "https://rest.fal.ai",
        "https://v3.fal.media",
        "https://api.fal.ai/v1",
    )
    emu = Settings.from_env({"BATCH_RUNNER_FAL_URL": "http://127.0.0.1:8765/", "HOME": "/tmp"}).hosts
    assert (emu.queue, emu.rest, emu.cdn, emu.api) == (
        "http://127.0.0.1:8765",
        "http://127.0.0.1:8765",
        "http://127.0.0.1:8765",
        "http://127.0.0.1:8765/v1",
    )
    assert real.is_real_fal and not emu.is_real_fal


def test_fal_url_must_be_http():
    from batch_runner.errors import ConfigError

    with pytest.raises(ConfigError):
        Settings.from_env({"HOME": "/tmp"}).with_overrides(fal_url="queue.fal.run")


def test_fal_key_is_a_secret_that_never_shows():
    s = Settings.from_env({"FAL_KEY": "sk-live-123", "HOME": "/tmp"})
    assert s.fal_key is not None and s.fal_key.reveal() == "sk-live-123"
    assert "sk-live-123" not in repr(s) and "sk-live-123" not in str(s)


def test_budget_settings_come_from_the_environment():
    from batch_runner.errors import ConfigError

    s = Settings.from_env({"HOME": "/tmp", "BATCH_RUNNER_MAX_USD_PER_DAY": "75.50", "BATCH_RUNNER_WARN_AT_USD": "50"})
    assert (s.max_usd_per_day_micro, s.warn_at_micro) == (75_500_000, 50_000_000)
    with pytest.raises(ConfigError, match="BATCH_RUNNER_MAX_USD_PER_DAY"):
        Settings.from_env({"HOME": "/tmp", "BATCH_RUNNER_MAX_USD_PER_DAY": "lots"})


def test_serve_takes_the_crash_window_holds_and_the_billable_units_switch(tmp_path):
    exe = Path(sys.executable).parent / "batch-runner"
    proc = subprocess.Popen(
        [
            str(exe),
            "emulator",
            "serve",
            "--port",
            "0",
            "--hold-submit",
            "2.5",
            "--hold-submit-count",
            "1",
            "--hold-download",
            "4",
            "--no-billable-units",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        holds = httpx.get(f"{url}/_emulator/holds", timeout=10).json()
        assert holds["submit"]["seconds"] == 2.5 and holds["submit"]["remaining"] == 1
        assert holds["download"]["seconds"] == 4 and holds["download"]["remaining"] is None
        assert httpx.get(f"{url}/_emulator/health", timeout=10).json()["billable_units"] is False
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
