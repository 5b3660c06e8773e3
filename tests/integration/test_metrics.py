"""Prometheus metrics over real HTTP: a `work` process on port 0 says where it serves, is scraped
while it works against the emulator with injected faults, and its figures match the job table."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import httpx
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from batch_runner.cli import cli
from batch_runner.db.gauges import read_gauges
from batch_runner.metrics import DatabaseCollector, Metrics
from tests.integration.run_helpers import make_bench


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and labels."""
    text = httpx.get(url, timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _labelled(samples: dict, name: str, label: str) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in samples.items() if k[0] == name and v}


def _serving_url(proc: subprocess.Popen, lines: list[str]) -> str:
    """The address the process says once on stderr; its other lines are kept for the failure message."""
    for line in proc.stderr:  # type: ignore[union-attr]
        lines.append(line)
        found = re.search(r"metrics: serving (http://\S+/metrics)", line)
        if found:
            threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
            return found.group(1)
    raise AssertionError("".join(lines))


def test_a_worker_scraped_while_it_works_through_faults_matches_the_job_table(tmp_path, media, emulator_factory):
    emu = emulator_factory(faults="refuse=1/1")
    bench = make_bench(tmp_path, media, emu)  # 4 jobs at $0.30
    env = {"BATCH_RUNNER_DB": bench.db_url, "BATCH_RUNNER_FAL_URL": emu.url, "FAL_KEY": "metrics-key"}
    assert CliRunner().invoke(cli, ["enqueue", str(bench.manifest)], env=env).exit_code == 0
    exe = Path(sys.executable).parent / "batch-runner"
    proc = subprocess.Popen(
        [str(exe), "work", "--batch", "b", "--metrics-port", "0"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    try:
        url = _serving_url(proc, lines)
        first = _scrape(url)  # while it works: the cap, the breaker, the database all there
        assert first[("batch_runner_in_flight_cap", ())] == 2 and first[("batch_runner_database_up", ())] == 1
        assert first[("batch_runner_circuit_breaker_open", ())] == 0
        deadline = time.monotonic() + 120
        while True:
            samples = _scrape(url)
            if sum(_labelled(samples, "batch_runner_jobs_ended_total", "state").values()) >= 4:
                break
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    table = dict(bench.sql("select state, count(*) from jobs group by state"))
    assert table == {"succeeded": 3, "failed": 1}
    assert _labelled(samples, "batch_runner_jobs", "state") == table
    assert _labelled(samples, "batch_runner_jobs_ended_total", "state") == table
    [(sent,)] = bench.sql("select count(*) from attempts where request_id is not null")
    assert samples[("batch_runner_submits_total", ())] == sent == 4
    assert _labelled(samples, "batch_runner_fal_errors_total", "error_type") == {"content_policy_violation": 1}
    assert samples[("batch_runner_retries_total", ())] == 0
    [(billed,)] = bench.sql("select coalesce(sum(billed_micro_usd), 0) from attempts")
    spend = samples[("batch_runner_spend_usd", (("budget", "run"), ("kind", "billed")))]
    assert Decimal(str(spend)) == Decimal(billed) / 1_000_000 == Decimal("0.90")
    assert samples[("batch_runner_in_flight", ())] == 0 and samples[("batch_runner_oldest_queued_age_seconds", ())] == 0


def test_a_metrics_port_in_use_is_a_setting_error(tmp_path, media, emulator_factory):
    bench = make_bench(tmp_path, media, emulator_factory(), clips=1)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    env = {
        "BATCH_RUNNER_DB": bench.db_url,
        "BATCH_RUNNER_FAL_URL": bench.emulator.url,
        "FAL_KEY": "k",
        "BATCH_RUNNER_METRICS_PORT": str(taken.getsockname()[1]),
    }
    try:
        result = CliRunner().invoke(cli, ["run", str(bench.manifest)], env=env)
    finally:
        taken.close()
    assert result.exit_code == 3 and "Error: cannot serve metrics on '127.0.0.1' port " in result.output
    assert "Traceback" not in result.output and bench.sql("select count(*) from attempts") == [(0,)]


def test_retries_and_fal_error_types_are_counted_as_the_attempts_table_records_them(
    tmp_path, media, emulator_factory, db_url
):
    """In-process, with the fast test timings: a failed run (runner_disconnected) is retried."""
    bench = make_bench(tmp_path, media, emulator_factory(faults="fail=1/1"), db_url=db_url)
    engine = bench.repo.engine
    metrics = Metrics(DatabaseCollector(lambda run: read_gauges(engine, run, 5_000_000), 2))
    host, port = metrics.serve("127.0.0.1", 0)
    try:
        summary = bench.run(reporter=metrics, max_cost=3_000_000)
        samples = _scrape(f"http://{host}:{port}/metrics")
    finally:
        metrics.close()
    assert summary.counts == {"succeeded": 4}
    [(attempts,)] = bench.sql("select count(*) from attempts")
    assert samples[("batch_runner_retries_total", ())] == attempts - 4 == 1
    assert samples[("batch_runner_submits_total", ())] == attempts
    assert _labelled(samples, "batch_runner_fal_errors_total", "error_type") == {"runner_disconnected": 1}
    assert _labelled(samples, "batch_runner_budget_usd", "budget") == {"run": 3.0, "account_per_day": 5.0}
    run_spend = {
        k: samples[("batch_runner_spend_usd", (("budget", "run"), ("kind", k)))] for k in ("billed", "reserved")
    }
    assert run_spend == {"billed": 1.2, "reserved": 1.2}  # the failed attempt was never billed
    assert samples[("batch_runner_spend_usd", (("budget", "account_per_day"), ("kind", "billed")))] == 1.2
    [(delivered,)] = bench.sql("select sum(size_bytes) from outputs")
    assert samples[("batch_runner_download_bytes_total", ())] == delivered > 0  # the worker reports each download
    assert samples[("batch_runner_download_seconds_total", ())] > 0
