"""Emulator settings: concurrency, the time model, faults, keys and where files live."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: How long fal takes, in fal seconds, before the speed factor divides them.
QUEUE_DELAY_S = 2.0
PROCESSING_S = {"reframe": 60.0, "text-to-video": 45.0, "image-to-video": 45.0, "video-to-video": 60.0, "modify": 50.0}
RESULT_TTL_S = 3600.0  # fal keeps a result 1 h after completion
WEBHOOK_ATTEMPTS = 10
WEBHOOK_RETRY_S = 12 * 60.0  # 10 attempts over about 2 hours
# SSE keep-alive: a comment line (": …") every 15 s while nothing changes, as fal sends on the
# status stream (https://fal.ai/docs/inference-api/queue/status-stream); SSE parsers skip comments
# (fal-js streaming.ts uses eventsource-parser; our FalClient.stream reads only `data:` lines).
KEEPALIVE_S = 15.0
RETRY_AFTER_S = 1
# fal-client keeps a CDN token until its `expires_at` (fal:projects/fal_client/src/fal_client/client.py
# CDNToken.is_expired); fal does not publish the lifetime. The emulator issued 1-h tokens before.
TOKEN_TTL_S = 3600.0
# fal docs: CDN media lives "at least 7 days" unless the account's storage settings say otherwise
# (https://docs.fal.ai/documentation/model-apis/media-expiration); an upload may ask for its own
# lifetime with X-Fal-Object-Lifecycle(-Preference) (see cdn.py).
UPLOAD_TTL_S = 7 * 24 * 3600.0


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything an emulator instance is started with."""

    host: str = "127.0.0.1"
    port: int = 0
    concurrency: int = 2  # fal's default account limit: at most this many IN_PROGRESS
    speed: float = 1.0  # 10 = ten times faster than fal; delays are divided by it
    instant: bool = False  # no delays, and outputs rendered once per shape and reused
    reuse_renders: bool = False  # render once per output shape but keep the time model (load tests)
    faults: str = ""  # e.g. "rate_limit=0.1,drop_after_submit=1/1" (see faults.py)
    seed: int = 0
    data_dir: Path | None = None  # uploads and outputs; a temporary folder when None
    fps: int = 24  # frame rate of rendered outputs
    # Pixels added to every output's (width, height): fal documents no output sizes, so a client
    # must not depend on the emulator's convention (tests of tolerant output checks use it).
    output_skew_px: tuple[int, int] = (0, 0)
    result_ttl_s: float = RESULT_TTL_S
    keys: frozenset[str] | None = None  # accepted API keys; None accepts any key
    admin_keys: frozenset[str] | None = None  # keys allowed on admin routes (usage, billing events); None: any
    prices_path: Path | None = None  # a price file laid over the default table
    # The unit the pricing and usage APIs name per endpoint, where it is not the table's: fal does
    # not document its unit names ("e.g., 'image', 'video', or a GPU/compute unit for some models",
    # https://docs.fal.ai/platform-apis/v1/models/usage), so tests can make it say others.
    price_units: dict[str, str] = field(default_factory=dict)
    user_id: str = "emulator-user"
    keepalive_s: float = KEEPALIVE_S  # seconds between keep-alive comments on a quiet status stream
    send_billable_units: bool = True  # some fal endpoints may omit x-fal-billable-units
    token_ttl_s: float = TOKEN_TTL_S  # CDN upload tokens expire this long after issue (401 afterwards)
    # Signed multipart upload URLs stop working this long after initiate-multipart (None: never).
    # fal documents no lifetime; signed URLs do expire, so a slow upload may see a 403 midway.
    signed_url_ttl_s: float | None = None
    upload_ttl_s: float | None = UPLOAD_TTL_S  # an upload's lifetime when it asks for none; None: never
    processing_s: dict[str, float] = field(default_factory=lambda: dict(PROCESSING_S))
    queue_delay_s: float = QUEUE_DELAY_S
    # Holds (real seconds, not scaled), for crash tests that kill a client inside a window; the
    # counts limit them to the first N occurrences (None: all). POST /_emulator/holds re-arms them.
    hold_submit_s: float = 0.0  # after a submit is accepted (it will run and bill), before its answer
    hold_submit_count: int | None = None
    hold_download_s: float = 0.0  # after a download's headers and first half, before the rest
    hold_download_count: int | None = None

    def scaled(self, fal_seconds: float) -> float:
        """Real seconds for a span of fal time under the speed factor (0 when instant)."""
        if self.instant:
            return 0.0
        return fal_seconds / self.speed if self.speed > 0 else 0.0
