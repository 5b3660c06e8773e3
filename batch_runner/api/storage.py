"""fal's storage vocabulary: the CDN token an upload is authorised with, and the lifecycle
headers that ask fal to keep an uploaded file for a given time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

# fal's toolkit refreshes its CDN token an hour before `expires_at`
# (fal:projects/fal/src/fal/toolkit/file/providers/fal.py `FalV2TokenManager.get_token(valid_for=1h)`);
# fal-client only once `now >= expires_at` (fal:…/fal_client/client.py `CDNToken.is_expired`). We
# take the hour, bounded by half the token's lifetime so a short-lived token is not refreshed on
# every upload.
TOKEN_MARGIN_S = 3600.0


@dataclass(frozen=True)
class CdnToken:
    """fal's answer to `POST {rest}/storage/auth/token?storage_type=fal-cdn-v3`
    (fal:…/fal_client/client.py `CDNTokenManager._refresh_token`: token, token_type, base_url, expires_at).
    `base_url` serves only fal-client's CDN multipart, which we do not use (see MULTIPART_THRESHOLD)."""

    header: str  # the Authorization value: "<token_type> <token>"
    refresh_at: datetime | None  # None: fal gave no expiry; only a 401/403 makes us fetch another

    @classmethod
    def from_answer(cls, data: dict[str, Any], now: datetime) -> CdnToken:
        expires = _parse_time(data.get("expires_at"))
        refresh = None
        if expires is not None:
            lifetime_s = max(0.0, (expires - now).total_seconds())
            refresh = expires - timedelta(seconds=min(TOKEN_MARGIN_S, lifetime_s / 2))
        return cls(f"{data['token_type']} {data['token']}", refresh)

    def due(self, now: datetime) -> bool:
        return self.refresh_at is not None and now >= self.refresh_at


def _parse_time(value: Any) -> datetime | None:
    """fal sends ISO-8601 with an offset (fal-client parses it with `datetime.fromisoformat`)."""
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def lifecycle_headers(lifetime_s: int | None) -> dict[str, str]:
    """fal's object-lifecycle headers for an upload that must live `lifetime_s` seconds. fal-client
    sends the same JSON under both names on every upload call ("CDN uploads expect
    X-Fal-Object-Lifecycle, while storage-backed upload initiation uses
    X-Fal-Object-Lifecycle-Preference": fal:…/fal_client/client.py `_object_lifecycle_headers`);
    the body is `{"expiration_duration_seconds": N}` (`_normalize_upload_lifecycle`; fal-js
    storage.ts `UploadLifecycleConfig`)."""
    if lifetime_s is None:
        return {}
    if lifetime_s <= 0:
        raise ValueError("an upload lifetime must be a positive number of seconds")  # 0 would mean "never"
    body = json.dumps({"expiration_duration_seconds": int(lifetime_s)})
    return {"X-Fal-Object-Lifecycle": body, "X-Fal-Object-Lifecycle-Preference": body}
