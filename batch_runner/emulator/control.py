"""Test controls: holds that stall a submit's answer or a download midway, and outages of the read routes."""

# A test arms a hold, waits until the emulator reports its client inside the window (`held_now`),
# and kills the client there: a deterministic crash. An outage makes every read answer an nginx
# error for a span of time. All state lives on the server's event loop; nothing here needs a lock.

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .faults import OutageSpan

DISCONNECT_POLL_S = 0.05  # pause between stray messages while waiting for a client to go away


@dataclass
class Hold:
    """One kind of hold: how long, how many more, and how many are held now and were ever started."""

    seconds: float = 0.0
    remaining: int | None = None  # holds still to start; None: every occurrence
    held_now: int = 0
    held_total: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # set: holds under way end now

    def arm(self, seconds: float, count: int | None) -> None:
        self.seconds, self.remaining = seconds, count

    def release(self) -> None:
        """End every hold under way now (later ones wait again)."""
        self.released.set()
        self.released = asyncio.Event()

    def take(self) -> float:
        """Seconds to hold this occurrence (0: not held), counting it against `remaining`."""
        if self.seconds <= 0 or self.remaining == 0:
            return 0.0
        if self.remaining is not None:
            self.remaining -= 1
        self.held_total += 1
        return self.seconds

    def view(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "remaining": self.remaining,
            "held_now": self.held_now,
            "held_total": self.held_total,
        }


@dataclass
class Holds:
    """The submit hold (after the request is accepted, before its answer) and the download hold."""

    submit: Hold = field(default_factory=Hold)
    download: Hold = field(default_factory=Hold)

    def arm(self, body: dict[str, Any]) -> None:
        """Re-arm each hold named in `body` (`submit_s`/`submit_count`, `download_s`/`download_count`).

        A hold is replaced whole when any of its keys is present: a missing `_s` means 0 (off), a
        missing `_count` means every occurrence. Raises ValueError on a bad value, changing nothing.
        """
        unknown = set(body) - {"submit_s", "submit_count", "download_s", "download_count"}
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
        plans = []
        for kind, hold in (("submit", self.submit), ("download", self.download)):
            if f"{kind}_s" in body or f"{kind}_count" in body:
                plans.append(
                    (
                        hold,
                        _seconds(body.get(f"{kind}_s", 0), f"{kind}_s"),
                        _count(body.get(f"{kind}_count"), f"{kind}_count"),
                    )
                )
        for hold, seconds, count in plans:
            hold.arm(seconds, count)

    def disarm(self) -> None:
        """No more holds, and every hold under way ends now."""
        for h in (self.submit, self.download):
            h.arm(0.0, None)
            h.release()

    def view(self) -> dict[str, Any]:
        return {"submit": self.submit.view(), "download": self.download.view()}


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a number of seconds ≥ 0, got {value!r}")
    return float(value)


def _count(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer ≥ 0 or null, got {value!r}")
    return value


async def hold(h: Hold, seconds: float, receive: Callable[[], Awaitable[Mapping[str, Any]]]) -> bool:
    """Wait `seconds` (real time), counted in `h.held_now`; end early if the client goes away or the
    hold is released. Returns True when the client disconnected during the hold.
    """
    h.held_now += 1
    gone = asyncio.ensure_future(_disconnected(receive))
    released = asyncio.ensure_future(h.released.wait())
    try:
        await asyncio.wait([gone, released], timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        return gone.done() and not gone.cancelled() and gone.exception() is None
    finally:
        gone.cancel()
        released.cancel()
        h.held_now -= 1


async def _disconnected(receive: Callable[[], Awaitable[Mapping[str, Any]]]) -> None:
    """Return once the ASGI server reports `http.disconnect` (the request body is already read)."""
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(DISCONNECT_POLL_S)


@dataclass
class Window:
    """One outage, in `time.monotonic()` seconds."""

    start: float
    end: float
    submits: bool


class Outage:
    """Windows of time in which the read routes (and optionally submits) answer nginx errors."""

    def __init__(self, spans: list[OutageSpan], scaled: Callable[[float], float]) -> None:
        self._spans, self._scaled = spans, scaled
        self.windows: list[Window] = []
        self.answered = 0  # nginx answers given because of an outage

    def schedule(self, started: float) -> None:
        """Place the fault spec's outages after the server's start (`time.monotonic()`)."""
        self.windows = [
            Window(
                started + self._scaled(s.start_s),
                started + self._scaled(s.start_s) + self._scaled(s.duration_s),
                s.submits,
            )
            for s in self._spans
        ]

    def start(self, seconds: float, submits: bool) -> None:
        """An outage from now for `seconds` of real time."""
        now = time.monotonic()
        self.windows.append(Window(now, now + seconds, submits))

    def end(self) -> int:
        """End every outage under way now; returns how many were."""
        now, ended = time.monotonic(), 0
        for w in self.windows:
            if w.start <= now < w.end:
                w.end, ended = now, ended + 1
        return ended

    def active(self, *, submit: bool = False) -> bool:
        now = time.monotonic()
        return any(w.start <= now < w.end and (w.submits or not submit) for w in self.windows)

    def view(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "active": self.active(),
            "submits": self.active(submit=True),
            "answered": self.answered,
            "windows": [
                {"starts_in_s": round(w.start - now, 3), "ends_in_s": round(w.end - now, 3), "submits": w.submits}
                for w in self.windows
                if w.end > now
            ],
        }
