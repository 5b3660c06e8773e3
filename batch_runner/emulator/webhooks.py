"""Webhook delivery signed as fal signs it: Ed25519 over request id, user id, timestamp and
the body's sha256, with the public key published as a JWKS (reference §9)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

DELIVERY_TIMEOUT_S = 15.0


class WebhookSigner:
    """One Ed25519 key per emulator, and the JWKS that publishes it."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self._key = Ed25519PrivateKey.generate()
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.kid = hashlib.sha256(raw).hexdigest()[:16]
        self._x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": self._x, "kid": self.kid, "use": "sig", "alg": "EdDSA"}]}

    def headers(self, request_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        message = "\n".join([request_id, self.user_id, ts, hashlib.sha256(body).hexdigest()]).encode()
        return {
            "Content-Type": "application/json",
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": self.user_id,
            "X-Fal-Webhook-Timestamp": ts,
            "X-Fal-Webhook-Signature": self._key.sign(message).hex(),
        }


def payload(request_id: str, ok: bool, body: Any, error: str | None) -> bytes:
    data: dict[str, Any] = {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": "OK" if ok else "ERROR",
        "payload": body,
    }
    if not ok:
        data["error"] = error
    return json.dumps(data).encode()


async def deliver(
    signer: WebhookSigner,
    url: str,
    request_id: str,
    body: bytes,
    *,
    attempts: int,
    retry_s: float,
    log: list[dict[str, Any]],
) -> None:
    """POST the webhook, retrying on failure; every attempt is logged for inspection."""
    async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_S) as client:
        for attempt in range(1, attempts + 1):
            entry: dict[str, Any] = {"request_id": request_id, "url": url, "attempt": attempt, "at": time.time()}
            try:
                resp = await client.post(url, content=body, headers=signer.headers(request_id, body))
                entry["status_code"] = resp.status_code
                log.append(entry)
                if resp.status_code < 300:
                    return
            except httpx.HTTPError as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"
                log.append(entry)
            await asyncio.sleep(retry_s)
