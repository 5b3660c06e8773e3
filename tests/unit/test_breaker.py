"""The pool's circuit breaker on a fake clock: it opens after failures in a row, lets one probe
through after a pause, doubles the pause up to its cap, and says so once per outage."""

from __future__ import annotations

import threading

from batch_runner.pool import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: Clock, said: list[tuple[str, str]]) -> CircuitBreaker:
    return CircuitBreaker(2, 5.0, 20.0, lambda state, msg: said.append((state, msg)), clock=clock)


def test_it_opens_after_failures_in_a_row_and_says_so_once():
    clock, said = Clock(), []
    b = _breaker(clock, said)
    b.failure("status: HTTP 502")
    assert b.state == "closed"
    b.success()
    b.failure("status: HTTP 502")
    assert b.state == "closed"  # a success in between starts the count again
    b.failure("status: HTTP 502")
    assert b.state == "open" and [s for s, _ in said] == ["open"] and "retried in 5 s" in said[0][1]


def test_one_probe_after_the_pause_and_the_pause_doubles_up_to_its_cap():
    clock, said = Clock(), []
    b = _breaker(clock, said)
    b.failure("x")
    b.failure("x")
    stop = threading.Event()
    stop.set()
    assert not b.acquire(stop)  # stopping: nobody waits
    for pause in (5.0, 10.0, 20.0, 20.0):
        clock.now += pause
        assert b.acquire(threading.Event()) and b.state == "half_open"
        b.failure("still down")  # the probe failed: open again, longer
        assert b.state == "open" and b._reopen_at == clock.now + min(pause * 2, 20.0)
    clock.now += 20.0
    assert b.acquire(threading.Event())
    b.success()
    assert b.state == "closed" and [s for s, _ in said] == ["open", "closed"]  # once per outage


def test_a_probe_that_reached_no_one_lets_another_thread_probe():
    clock, said = Clock(), []
    b = _breaker(clock, said)
    b.failure("x")
    b.failure("x")
    clock.now += 5.0
    assert b.acquire(threading.Event()) and b.state == "half_open"
    b.done()  # e.g. it found no job to work on
    assert b.state == "open"
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(b.acquire(threading.Event())))
    t.start()
    t.join(timeout=5)
    assert got == [True] and b.state == "half_open"
