"""Fault injection, reproducible from a seed: each decision hashes (seed, fault, key).

Spec: comma-separated `name=P` or `name=P/N` (probability P, at most N times per server),
e.g. `rate_limit=0.2,drop_after_submit=1/1`. Keys are stable facts such as "the 2nd submit of
this input", so the same seed gives the same faults whatever the timing.
"""

from __future__ import annotations

import hashlib
import threading

FAULTS: dict[str, str] = {
    "rate_limit": "429 with Retry-After on a queue or storage call",
    "bad_gateway": "nginx-style 502/503 without x-fal-request-id on a queue or storage call",
    "gateway_timeout": "504 request_timeout on submit; the request is not created",
    "drop_after_submit": "the submit is accepted, then the connection drops before the answer",
    "fail": "the run fails: COMPLETED with error_type runner_disconnected (retryable, not billed)",
    "refuse": "the run is refused: COMPLETED with a content_policy_violation (not billed)",
    "slow_download": "an output file is served slowly",
    "truncate_download": "an output download is cut off midway",
    "lock": "403 'User is locked' on submit",
    "expire": "the result expires as soon as the request completes",
    "stream_unavailable": "the status stream answers an nginx 503 (clients must fall back to polling)",
}


class FaultPlan:
    """Parsed fault probabilities and limits, with seeded, thread-safe decisions."""

    def __init__(self, spec: str = "", seed: int = 0) -> None:
        self.seed = seed
        self.rules: dict[str, tuple[float, int | None]] = {}
        self.fired: dict[str, int] = {}
        self._lock = threading.Lock()
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip()
            if name not in FAULTS:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
            prob_text, _, limit_text = (value if sep else "1").partition("/")
            try:
                prob = float(prob_text)
                limit = int(limit_text) if limit_text else None
            except ValueError:
                raise ValueError(f"fault {name!r}: expected P or P/N, got {value!r}") from None
            if not 0 <= prob <= 1 or (limit is not None and limit < 0):
                raise ValueError(f"fault {name!r}: probability must be 0..1 and the limit ≥ 0")
            self.rules[name] = (prob, limit)

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
