"""Fault injection, reproducible from a seed: each decision hashes (seed, fault, key).

Spec: comma-separated `name=P` or `name=P/N` (probability P, at most N times per server),
e.g. `rate_limit=0.2,drop_after_submit=1/1`. Keys are stable facts such as "the 2nd submit of
this input" or "the 3rd download of this file", so the same seed gives the same faults whatever
the timing. Outages are windows of time instead: `outage=START+DURATION` (fal seconds after the
server starts, divided by the speed factor like every other delay).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

FAULTS: dict[str, str] = {
    "rate_limit": "429 with Retry-After on a queue call, a CDN upload or a file download",
    "bad_gateway": "nginx-style 502/503 without x-fal-request-id on a queue call, a CDN upload or a file download",
    "gateway_timeout": "504 request_timeout on submit; the request is not created",
    "drop_after_submit": "the submit is accepted, then the connection drops before the answer",
    "fail": "the run fails: COMPLETED with error_type runner_disconnected (retryable, not billed)",
    "refuse": "the run is refused: COMPLETED with a content_policy_violation (not billed)",
    "slow_download": "an output file is served slowly",
    "truncate_download": "an output download is cut off midway",
    "lock": "403 'User is locked' on submit",
    "expire": "the result expires as soon as the request completes",
    "stream_unavailable": "the status stream answers an nginx 503 (clients must fall back to polling)",
    "outage": "outage=START+DURATION: from START to START+DURATION fal seconds after the server starts, every "
    "read (status, status stream, result, cancel, file downloads) answers nginx 502/503 HTML without "
    "x-fal-request-id; submits still work",
    "outage_all": "outage_all=START+DURATION: an outage that also refuses submits (nginx 502/503, nothing created)",
}
OUTAGE_FAULTS = ("outage", "outage_all")


@dataclass(frozen=True)
class OutageSpan:
    """An outage from the spec, in fal seconds after the server starts."""

    start_s: float
    duration_s: float
    submits: bool


class FaultPlan:
    """Parsed fault probabilities, limits and outage spans, with seeded, thread-safe decisions."""

    def __init__(self, spec: str = "", seed: int = 0) -> None:
        self.seed = seed
        self.rules: dict[str, tuple[float, int | None]] = {}
        self.outages: list[OutageSpan] = []
        self.fired: dict[str, int] = {}
        self._lock = threading.Lock()
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip()
            if name not in FAULTS:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
            if name in OUTAGE_FAULTS:
                self.outages.append(_outage_span(name, value.strip()))
            else:
                self.rules[name] = _rule(name, value if sep else "1")

    def fires(self, name: str, *key: object) -> bool:
        """Whether fault `name` happens for this key (and count it when it does)."""
        rule = self.rules.get(name)
        if rule is None:
            return False
        prob, limit = rule
        digest = hashlib.sha256(f"{self.seed}|{name}|{'|'.join(map(str, key))}".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 >= prob:
            return False
        with self._lock:
            if limit is not None and self.fired.get(name, 0) >= limit:
                return False
            self.fired[name] = self.fired.get(name, 0) + 1
        return True

    def note(self, name: str) -> None:
        """Count a fault that is not a seeded decision (an outage answer)."""
        with self._lock:
            self.fired[name] = self.fired.get(name, 0) + 1


def _rule(name: str, value: str) -> tuple[float, int | None]:
    prob_text, _, limit_text = value.partition("/")
    try:
        prob = float(prob_text)
        limit = int(limit_text) if limit_text else None
    except ValueError:
        raise ValueError(f"fault {name!r}: expected P or P/N, got {value!r}") from None
    if not 0 <= prob <= 1 or (limit is not None and limit < 0):
        raise ValueError(f"fault {name!r}: probability must be 0..1 and the limit ≥ 0")
    return prob, limit


def _outage_span(name: str, value: str) -> OutageSpan:
    start_text, plus, duration_text = value.partition("+")
    try:
        start, duration = float(start_text), float(duration_text)
    except ValueError:
        raise ValueError(f"fault {name!r}: expected {name}=START+DURATION in seconds, got {value!r}") from None
    if not plus or start < 0 or duration <= 0:
        raise ValueError(f"fault {name!r}: START must be ≥ 0 and DURATION > 0, got {value!r}")
    return OutageSpan(start, duration, submits=name == "outage_all")
