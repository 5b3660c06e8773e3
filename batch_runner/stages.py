"""The pool's pipeline parts, free of jobs and fal: a bounded hand-off stage worked by its own
threads (delivery), a look-ahead thread that readies the next items before they are taken
(uploads), a signal that wakes waiting threads the moment something is released, and a precedence
that holds deliveries back while a freed slot is being refilled.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from .logs import get_logger

log = get_logger("pool")

T = TypeVar("T")
STOP_CHECK_S = 0.5  # how often a waiting thread looks at the stop event (set by a signal handler)


def _wait_while(cond: threading.Condition, busy: Callable[[], bool], timeout_s: float, stop: threading.Event) -> None:
    """Wait on `cond` while `busy()`, at most `timeout_s`, looking at `stop` every STOP_CHECK_S."""
    deadline = time.monotonic() + timeout_s
    with cond:
        while busy() and not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            cond.wait(min(left, STOP_CHECK_S))


class Signal:
    """A counter that waiters watch: `fire` wakes every thread waiting for a change at once."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def fire(self) -> None:
        with self._cond:
            self._count += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout_s: float, stop: threading.Event) -> None:
        """Return when the count moved past `seen`, after `timeout_s`, or soon after `stop`."""
        _wait_while(self._cond, lambda: self._count == seen, timeout_s, stop)


class Precedence:
    """Urgent work first: a thread that `defer`s (a delivery) waits for the urgent work (refilling
    a freed fal slot) under way when it asks, at most `max_wait_s`; urgent work begun after that
    does not hold it back, so deliveries never wait on an endless stream of refills. Each thread
    counts once however often it calls `begin`; `end` without `begin` does nothing."""

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s
        self._cond = threading.Condition()
        self._issued = 0  # tickets handed out so far, one per piece of urgent work begun
        self._open: set[int] = set()  # the tickets of urgent work under way
        self._mine = threading.local()

    def begin(self) -> None:
        if getattr(self._mine, "ticket", None) is not None:
            return
        with self._cond:
            self._mine.ticket = self._issued
            self._open.add(self._issued)
            self._issued += 1

    def end(self) -> None:
        ticket = getattr(self._mine, "ticket", None)
        if ticket is None:
            return
        self._mine.ticket = None
        with self._cond:
            self._open.discard(ticket)
            self._cond.notify_all()

    def under_way(self) -> int:
        with self._cond:
            return len(self._open)

    def defer(self, stop: threading.Event) -> None:
        """Return when the urgent work under way now has ended, after `max_wait_s`, or soon after `stop`."""
        with self._cond:
            before = self._issued
        _wait_while(self._cond, lambda: any(t < before for t in self._open), self.max_wait_s, stop)


class Stage(Generic[T]):
    """Items handed over by producer threads and worked by `threads` threads of the stage's own.
    At most `capacity` items wait: `put` blocks while the stage is full (back-pressure on the
    producers). `close` lets the threads finish what waits and end; on `stop` they end after the
    item in hand, and what never started is left for `leftovers`."""

    def __init__(
        self, name: str, threads: int, capacity: int, work: Callable[[T], bool], stop: threading.Event
    ) -> None:
        self.name, self.capacity, self.work, self.stop = name, max(1, capacity), work, stop
        self._items: deque[T] = deque()
        # one lock, two conditions, as queue.Queue: a put wakes one worker thread and a take one
        # producer. One condition woken for all made every take wake every blocked producer
        # (dozens of slot threads when delivery is the bottleneck) to find one free place.
        lock = threading.Lock()
        self._not_full, self._not_empty = threading.Condition(lock), threading.Condition(lock)
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(max(1, threads))
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def put(self, item: T) -> bool:
        """Hand an item over, waiting while the stage is full; False (not taken) when stopping."""
        with self._not_full:
            while len(self._items) >= self.capacity and not self.stop.is_set():
                self._not_full.wait(STOP_CHECK_S)
            if self.stop.is_set():
                return False
            self._items.append(item)
            self._not_empty.notify()
            return True

    def waiting(self) -> int:
        with self._not_full:
            return len(self._items)

    def close(self) -> None:
        """No more items: the threads end once nothing waits."""
        with self._not_empty:
            self._closed = True
            self._not_empty.notify_all()

    def join(self) -> None:
        for t in self._threads:
            while t.is_alive():
                t.join(timeout=STOP_CHECK_S)

    def leftovers(self) -> list[T]:
        """Items that never started (the stage stopped); they are removed from the stage."""
        with self._not_full:
            items = list(self._items)
            self._items.clear()
            self._not_full.notify_all()
            return items

    def _next(self) -> T | None:
        with self._not_empty:
            while not self._items and not self._closed and not self.stop.is_set():
                self._not_empty.wait(STOP_CHECK_S)
            if self.stop.is_set() or not self._items:
                return None
            item = self._items.popleft()
            self._not_full.notify()  # one producer waiting for room may go on
            return item

    def _run(self) -> None:
        while (item := self._next()) is not None:
            if not self.work(item):
                return


class Lookahead(Generic[T]):
    """One thread that readies what the next claims will take (e.g. uploads a queued job's
    media), without taking it: `peek` names the next items, `ready` prepares one, `active` says
    whether to look at all now. `poke` after each take: it looks again after `every_n` takes
    (so a peek of 2n items keeps n readied ahead at one read per n takes), or every `every_s`."""

    def __init__(
        self,
        peek: Callable[[], Iterable[T]],
        key: Callable[[T], object],
        ready: Callable[[T], None],
        active: Callable[[], bool],
        stop: threading.Event,
        every_s: float,
        every_n: int = 1,
        remember: int = 4096,
    ) -> None:
        self.peek, self.key, self.ready, self.active, self.stop = peek, key, ready, active, stop
        self.every_s, self.every_n, self.remember = every_s, max(1, every_n), remember
        self._takes = 0  # pokes since the last look
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._done = threading.Event()
        self._seen: set[object] = set()  # readied already (bounded: forgotten in one go when full)
        self._thread = threading.Thread(target=self._run, name="lookahead", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        with self._lock:
            self._takes += 1
            if self._takes < self.every_n:
                return
        self._wake.set()

    def close(self) -> None:
        self._done.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._done.is_set() and not self.stop.is_set():
            self._wake.clear()
            with self._lock:
                self._takes = 0
            if self.active():
                self._look()
            self._wake.wait(self.every_s)

    def _look(self) -> None:
        try:
            items = list(self.peek())
        except Exception:  # a bug: said, but looking ahead only saves time, the claims do the work
            log.exception("look-ahead failed")
            return
        for item in items:
            if self._done.is_set() or self.stop.is_set() or not self.active():
                return
            k = self.key(item)
            if k in self._seen:
                continue
            if len(self._seen) >= self.remember:
                self._seen.clear()
            self._seen.add(k)
            try:
                self.ready(item)  # expected trouble is `ready`'s to swallow: the claim meets it again
            except Exception:
                log.exception("look-ahead failed")


__all__ = ["STOP_CHECK_S", "Lookahead", "Signal", "Stage"]
