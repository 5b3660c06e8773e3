"""When a window starts or ends, as a person types it: an ISO date or time, an age (24h, 7d,
90m) or a day name (today, yesterday); always a timezone-aware UTC datetime. Pure: now is passed."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

FORMS = "an ISO date or time (2026-11-20, 2026-11-20T18:00Z), an age (90m, 24h, 7d) or today/yesterday"
_AGE = re.compile(r"^(\d{1,6})\s*([mhdw])$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
MAX_SHOWN = 40  # characters of a bad value quoted back


def parse_when(value: str, now: datetime) -> datetime:
    """The moment `value` names, relative to `now` (aware UTC) for ages and day names;
    raises ValueError whose message quotes the value (bounded) and lists the forms."""
    text = value.strip().lower()
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if text == "today":
        return midnight
    if text == "yesterday":
        return midnight - timedelta(days=1)
    age = _AGE.match(text)
    if age:
        return now.astimezone(UTC) - timedelta(seconds=int(age.group(1)) * _UNIT_S[age.group(2)])
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{shown(value)} is not a time: use {FORMS}") from None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def shown(value: str) -> str:
    """A value quoted for a message, cut to MAX_SHOWN characters."""
    return repr(value if len(value) <= MAX_SHOWN else value[:MAX_SHOWN] + "…")
