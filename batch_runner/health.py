"""`health`: is this machine ready to run jobs? The database reachable and at head, ffprobe
installed, fal (or the emulator) answering, and no job held by a worker that died long ago.

Nothing here creates, migrates or pays for anything: the fal check is one GET of fal's pricing
API (https://docs.fal.ai/platform-apis/v1/models/pricing), which bills nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import catalog
from .api.client import FalClient
from .api.transport import RetryPolicy
from .config import Secret, Settings
from .db import engine as db_engine
from .db.health import stale_leases_at
from .errors import AuthError, BatchRunnerError, DatabaseError, RemoteError, UnhealthyError, shorten
from .probe import require_ffprobe

OK, FAIL, SKIP = "ok", "FAIL", "skip"


@dataclass(frozen=True)
class Check:
    """One check's verdict: its name, ok/FAIL/skip, what was found, and what to do when not ok."""

    name: str
    status: str
    detail: str
    hint: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "status": self.status, "detail": self.detail, "hint": self.hint}


@dataclass(frozen=True)
class Health:
    checks: tuple[Check, ...]

    @property
    def healthy(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "checks": [c.as_dict() for c in self.checks]}

    def error(self) -> UnhealthyError:
        """The one `Error:` line for an unhealthy answer (exit 11)."""
        bad = [c.name for c in self.checks if c.status == FAIL]
        return UnhealthyError(f"{len(bad)} of {len(self.checks)} health checks failed: {', '.join(bad)}")


def check(settings: Settings) -> Health:
    """Every check, each independent of the others' outcome (leases need the database)."""
    database = _database(settings.db_url)
    leases = _leases(settings) if database.ok else Check("leases", SKIP, "not checked: the database check failed")
    return Health((database, leases, _ffprobe(), _fal(settings)))


def _bounded(text: str, limit: int = 120) -> str:
    """A URL as it is when short, else cut by `shorten` (which also quotes it)."""
    return text if len(text) <= limit else shorten(text, limit)


def _failed(name: str, err: BatchRunnerError) -> Check:
    return Check(name, FAIL, err.message, err.user_hint)


def _database(url: str) -> Check:
    shown = _bounded(db_engine.safe_url(url))
    try:
        current = db_engine.stored_revision(url)  # reads only: a SQLite file is never created here
        head = db_engine.head_revision()
    except DatabaseError as err:
        return _failed("database", err)
    if current != head:
        return Check(
            "database",
            FAIL,
            f"{shown} is at schema revision {current or 'none'}; this version needs {head}",
            "run `batch-runner db upgrade` (with the newest batch-runner that uses this database)",
        )
    return Check("database", OK, f"{shown} reachable, schema at {head}")


def _leases(settings: Settings) -> Check:
    try:
        stale = stale_leases_at(settings.db_url, settings.lease_s)
    except DatabaseError as err:
        return _failed("leases", err)
    if not stale.jobs:
        return Check("leases", OK, f"no lease expired more than {settings.lease_s:g} s ago")
    owners = ", ".join(shorten(o, 60) for o in stale.owners)
    when = stale.oldest_expiry.isoformat(timespec="seconds") if stale.oldest_expiry else "?"
    return Check(
        "leases",
        FAIL,
        f"{stale.jobs} job(s) held by a worker whose lease ended more than {settings.lease_s:g} s ago "
        f"(oldest {when}; {owners})",
        "no worker is running to take them over: start `batch-runner work` (it resumes them)",
    )


def _ffprobe() -> Check:
    try:
        return Check("ffprobe", OK, require_ffprobe())
    except BatchRunnerError as err:
        return _failed("ffprobe", err)


def _fal(settings: Settings) -> Check:
    """One unbilled GET of fal's pricing API for one catalog endpoint, without retries."""
    where = _bounded(settings.fal_url or "fal")
    # without FAL_KEY a placeholder goes in the Authorization header: fal's 401 still proves it answers
    key = settings.fal_key or Secret("no-key-set")
    client = FalClient(settings.hosts, key, pool=1, policy=RetryPolicy(attempts=1))
    try:
        client.unit_prices([catalog.ENDPOINTS[0].id])
    except AuthError as err:
        if settings.fal_key is None:
            return Check("fal", OK, f"{where} answers (FAL_KEY is not set, so no key was checked)")
        return Check("fal", FAIL, f"{where} refused FAL_KEY (HTTP {err.status})", err.user_hint)
    except RemoteError as err:
        return Check("fal", FAIL, f"{where}: {err.message}", "check the network, --fal-url and https://status.fal.ai")
    finally:
        client.close()
    return Check("fal", OK, f"{where} answers{'' if settings.fal_key else ' (FAL_KEY is not set)'}")
