"""A killed worker never finishes its run: the next run closes it as `interrupted`, but only once
no live worker holds it (its creator and every `work --run NAME` joiner), on both backends."""

from __future__ import annotations

import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from batch_runner import planner
from batch_runner.db.plumbing import pid_namespace
from batch_runner.db.queue import JobQueue
from batch_runner.domain import Actor
from batch_runner.pool import pid_alive
from batch_runner.pricing import load_price_table
from tests.integration.run_helpers import make_bench

HOST = "this-host"
NS = pid_namespace()


@pytest.fixture
def bench(tmp_path, media, db_url):
    b = make_bench(tmp_path, media, SimpleNamespace(url="http://127.0.0.1:9"), clips=1, db_url=db_url)
    planner.enqueue(planner.plan(b.manifest, b.settings, load_price_table(), b.repo), b.repo)
    return b


@pytest.fixture
def pids():
    """A dead pid (a child that exited and was reaped) and a live one (a child that sleeps)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield SimpleNamespace(dead=dead.pid, live=live.pid)
    live.kill()
    live.wait()


def _queue(bench, pid: int, host: str = HOST, lease_s: float = 30.0) -> JobQueue:
    return JobQueue(bench.repo.engine, Actor(host, pid, "tester"), lease_s, pid_namespace=NS)


def _status(bench, name: str) -> tuple[str, bool]:
    status, finished_at = bench.sql("select status, finished_at from runs where name = ?", name)[0]
    return status, finished_at is not None


def test_a_dead_local_workers_run_is_closed_and_a_live_ones_kept(bench, pids):
    _queue(bench, pids.dead).start_run("killed", None, None)
    _queue(bench, pids.live).start_run("alive", None, None)
    me = _queue(bench, 1_000_000)
    now = me.start_run("now", None, None)
    assert me.close_dead_runs(pid_alive, now.id) == ["killed"]
    assert _status(bench, "killed") == ("interrupted", True)
    assert _status(bench, "alive") == ("running", False)
    assert _status(bench, "now") == ("running", False)  # the run being started is never closed
    (dead,) = bench.sql("select details_json from events where kind = 'run.interrupted'")
    assert '"run": "killed"' in dead[0]
    assert me.close_dead_runs(pid_alive, now.id) == []  # closed once


def test_a_shared_run_stays_open_while_one_joiner_lives(bench, pids):
    _queue(bench, pids.dead).start_run("shared", None, None)
    _queue(bench, pids.live).start_run("shared", None, None)  # `work --run shared` on another process
    me = _queue(bench, 1_000_000)
    now = me.start_run("now", None, None)
    assert me.close_dead_runs(pid_alive, now.id) == []
    assert _status(bench, "shared") == ("running", False)


def test_a_remote_worker_is_dead_once_its_leases_expired_and_unknown_without_any(bench):
    remote = _queue(bench, 77, host="other-machine", lease_s=1.5)
    run = remote.start_run("remote-busy", None, None)
    assert remote.claim(run.id, None, max_in_flight=10) is not None  # holds a job's lease
    _queue(bench, 78, host="idle-machine").start_run("remote-idle", None, None)
    me = _queue(bench, 1_000_000)
    now = me.start_run("now", None, None)
    assert me.close_dead_runs(pid_alive, now.id) == []  # the lease still runs: alive
    time.sleep(1.7)  # its heartbeat stopped: the lease ends
    assert me.close_dead_runs(pid_alive, now.id) == ["remote-busy"]
    assert _status(bench, "remote-idle") == ("running", False)  # no lease: cannot be told from idle


def test_a_restarted_container_with_the_same_pid_closes_its_predecessors_run(bench):
    _queue(bench, 1).start_run("before-restart", None, None)
    me = _queue(bench, 1)  # same host, same pid 1, another nonce
    now = me.start_run("now", None, None)
    assert me.close_dead_runs(pid_alive, now.id) == ["before-restart"]
