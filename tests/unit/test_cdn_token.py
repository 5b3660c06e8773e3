"""The CDN token's refresh time and the object-lifecycle headers, as pure logic."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from batch_runner.api.storage import CdnToken, lifecycle_headers

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _token(expires_at: object) -> CdnToken:
    return CdnToken.from_answer(
        {"token": "t", "token_type": "Bearer", "base_url": "https://v3.fal.media", "expires_at": expires_at}, NOW
    )


def test_a_long_token_is_refreshed_an_hour_before_it_expires():
    token = _token((NOW + timedelta(hours=24)).isoformat())
    assert token.header == "Bearer t"
    assert not token.due(NOW + timedelta(hours=22, minutes=59))
    assert token.due(NOW + timedelta(hours=23))


def test_a_short_token_is_refreshed_halfway_not_at_once():
    token = _token((NOW + timedelta(minutes=10)).isoformat())
    assert not token.due(NOW + timedelta(minutes=4, seconds=59))
    assert token.due(NOW + timedelta(minutes=5))


def test_an_expiry_in_z_or_without_offset_is_utc():
    assert _token("2026-11-21T14:00:00Z").refresh_at == NOW + timedelta(hours=1)
    assert _token("2026-11-21T14:00:00").refresh_at == NOW + timedelta(hours=1)


@pytest.mark.parametrize("expires_at", [None, "soon", 12])
def test_a_token_without_a_readable_expiry_is_kept_until_fal_refuses_it(expires_at):
    assert not _token(expires_at).due(NOW + timedelta(days=365))


def test_lifecycle_goes_under_both_header_names_fal_client_uses():
    headers = lifecycle_headers(604800)
    assert set(headers) == {"X-Fal-Object-Lifecycle", "X-Fal-Object-Lifecycle-Preference"}
    assert all(json.loads(v) == {"expiration_duration_seconds": 604800} for v in headers.values())
    assert lifecycle_headers(None) == {}


@pytest.mark.parametrize("lifetime", [0, -5])
def test_a_lifetime_must_be_positive(lifetime):
    with pytest.raises(ValueError, match="positive number of seconds"):
        lifecycle_headers(lifetime)


def test_multipart_part_urls_keep_the_signed_urls_encoding_as_fal_js_joins_them():
    from batch_runner.api.client import _beside

    # fal-js storage.ts: `${url.origin}${url.pathname}/${partNumber}${url.search}`
    assert (
        _beside("https://u.fal.media/m/ab%2Fcd?sig=1%2B2&x=y", "3") == "https://u.fal.media/m/ab%2Fcd/3?sig=1%2B2&x=y"
    )
    assert _beside("https://u.fal.media/m/id", "complete") == "https://u.fal.media/m/id/complete"
