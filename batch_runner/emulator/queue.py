"""The emulated queue: requests, an account concurrency limit, the time model, billing.

All state lives on the server's event loop; producer.py renders in a thread pool. A request moves
IN_QUEUE → IN_PROGRESS → COMPLETED (fal has no FAILED: a failed run completes with `error`).
Only successful runs are billed; a request cancelled while queued never runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import time
import uuid
from collections import deque
from decimal import Decimal
from pathlib import Path
from typing import Any

from .. import catalog
from ..pricing import PriceTable
from . import render, webhooks
from .config import WEBHOOK_ATTEMPTS, WEBHOOK_RETRY_S, EmulatorConfig
from .faults import FaultPlan
from .producer import Producer
from .request import COMPLETED, IN_PROGRESS, IN_QUEUE, Billed, Request, iso
from .store import FileStore


class Queue:
    """Accepts requests, runs at most `concurrency` at once, bills successes."""

    def __init__(
        self,
        config: EmulatorConfig,
        prices: PriceTable,
        store: FileStore,
        faults: FaultPlan,
        signer: webhooks.WebhookSigner,
        workdir: Path,
    ) -> None:
        self.config, self.prices, self.store, self.faults = config, prices, store, faults
        self.signer, self.workdir = signer, workdir
        self.requests: dict[str, Request] = {}
        self.received: list[dict[str, Any]] = []  # every submission, accepted or refused
        self.ledger: list[Billed] = []
        self.webhook_log: list[dict[str, Any]] = []
        self._waiting: deque[Request] = deque()
        self._running: set[str] = set()
        self._submits_per_input: dict[str, int] = {}
        self._wake = asyncio.Event()
        self.producer = Producer(config, store, workdir)
        self.open_requests = 0  # accepted and not yet completed
        self.peak_open = 0  # the most open at once: what a client's in-flight cap must bound
        self._dispatcher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.producer.start()
        self._dispatcher = asyncio.create_task(self._dispatch())

    async def stop(self) -> None:
        tasks = [
            t
            for t in [self._dispatcher, *self._background, *(r.task for r in self.requests.values())]
            if t and not t.done()
        ]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.producer.stop()

    # ------------------------------------------------------------------ submission

    def submission_number(self, input_hash: str) -> int:
        """1 for the first submit of an input, 2 for the next, …; the key of submit faults."""
        n = self._submits_per_input.get(input_hash, 0) + 1
        self._submits_per_input[input_hash] = n
        return n

    def record_refused(self, ep_id: str, input_hash: str, status: int, error: str) -> None:
        self.received.append(
            {
                "request_id": None,
                "endpoint": ep_id,
                "input_sha256": input_hash,
                "received_at": iso(time.time()),
                "state": "REFUSED",
                "http_status": status,
                "billable_units": None,
                "cost_usd": None,
                "error": error,
            }
        )

    def submit(
        self,
        ep: catalog.Endpoint,
        payload: dict[str, Any],
        input_hash: str,
        n: int,
        webhook_url: str | None,
        base_url: str,
        start_timeout_s: float | None = None,
    ) -> Request:
        rid = str(
            uuid.UUID(bytes=hashlib.sha256(f"{self.config.seed}|{input_hash}|{n}".encode()).digest()[:16], version=4)
        )
        now = time.time()
        req = Request(
            rid,
            ep,
            payload,
            input_hash,
            now,
            now + self.config.scaled(self.config.queue_delay_s),
            webhook_url,
            base_url,
        )
        req.log("Request received and queued")
        req.start_timeout_s = start_timeout_s
        if start_timeout_s is not None:
            # The deadline is in real seconds, not scaled by `speed`: it is the client's clock.
            asyncio.get_running_loop().call_later(start_timeout_s, self._start_deadline, req)
        self.requests[rid] = req
        self.received.append(
            {
                "request_id": rid,
                "endpoint": ep.id,
                "input_sha256": input_hash,
                "received_at": iso(now),
                "http_status": 200,
            }
        )
        self._waiting.append(req)
        self.open_requests += 1
        self.peak_open = max(self.peak_open, self.open_requests)
        self._wake.set()
        return req

    def position(self, req: Request) -> int:
        """Requests ahead of this one (0-based), as fal's queue_position."""
        try:
            return self._waiting.index(req)
        except ValueError:
            return 0

    def cancel(self, req: Request) -> tuple[int, str]:
        if req.state == COMPLETED:
            return 400, "ALREADY_COMPLETED"
        if req.state == IN_QUEUE:
            self._waiting.remove(req)
            self._finish_cancelled(req)
            return 200, "OK"
        if req.task and not req.task.done():
            req.task.cancel()
        return 202, "CANCELLATION_REQUESTED"

    def _start_deadline(self, req: Request) -> None:
        """X-Fal-Request-Timeout passed while the request still waited: it never runs and is not
        billed; fal "returns 504 Gateway Timeout with X-Fal-Request-Timeout-Type: user"
        (https://docs.fal.ai/documentation/model-apis/common-parameters). Once a runner has started
        it, "the timeout stops" (same page), so a started request is left alone."""
        if req.state != IN_QUEUE:
            return
        self._waiting.remove(req)
        req.timed_out = True
        # The body is the request-error shape (detail string + error_type,
        # https://fal.ai/docs/documentation/model-apis/request-errors). Which error_type fal puts on a
        # user start timeout is not documented; request_timeout (504) is that page's own example.
        # What marks it as the user's deadline is the X-Fal-Request-Timeout-Type header (app.py).
        self._finish_error(
            req,
            504,
            "Request timed out",
            "request_timeout",
            {"detail": "Request timed out", "error_type": "request_timeout"},
        )
        for other in self._waiting:  # every request behind it moved up one place
            other.touch()
        self._wake.set()

    # ------------------------------------------------------------------ scheduling

    async def _dispatch(self) -> None:
        while True:
            now = time.time()
            next_ready = None
            while self._waiting and len(self._running) < self.config.concurrency:
                head = self._waiting[0]
                if head.ready_at > now:
                    next_ready = head.ready_at
                    break
                self._waiting.popleft()
                self._running.add(head.id)
                # IN_PROGRESS from the moment it leaves the queue: a cancel in between must not
                # look for it in the queue any more
                head.state, head.started_at = IN_PROGRESS, now
                head.task = asyncio.create_task(self._run(head))
                head.task.add_done_callback(functools.partial(self._after_run, head))
                for other in self._waiting:  # every queued request moved up one place
                    other.touch()
            self._wake.clear()
            timeout = max(0.0, next_ready - time.time()) if next_ready else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _after_run(self, req: Request, _task: asyncio.Task[None]) -> None:
        """A task cancelled before its first step never enters `_run`: settle it here."""
        if req.state != COMPLETED:
            self._finish_cancelled(req)
        self._running.discard(req.id)
        self._wake.set()

    async def _run(self, req: Request) -> None:
        ep = req.endpoint
        req.log(f"Starting {ep.alias}")
        try:
            total = self.config.scaled(self.config.processing_s.get(ep.family, 60.0))
            for step in range(1, 5):
                await asyncio.sleep(total / 4)
                req.log(f"Generating: {step * 25}%")
            await self._produce(req)
        except asyncio.CancelledError:
            self._finish_cancelled(req)
        except render.RenderError as exc:
            status = 500 if exc.error_type == "internal_server_error" else 422
            field_name = exc.field or ep.source_field or "input"
            body: Any = (
                {"detail": [{"loc": ["body", field_name], "msg": str(exc), "type": exc.error_type}]}
                if status == 422
                else {"detail": str(exc), "error_type": exc.error_type}
            )
            self._finish_error(req, status, str(exc), exc.error_type, body)
        finally:
            self._running.discard(req.id)
            self._wake.set()

    async def _produce(self, req: Request) -> None:
        """Validate the input against its media, play any fault, render, store, bill, complete."""
        ep = req.endpoint
        full = ep.with_defaults(req.input)
        inputs = await self.producer.fetch_inputs(req)
        info = None
        if ep.source_field and ep.source_field in inputs:
            info = await self.producer.probe_input(inputs[ep.source_field], video=ep.source_kind == "video")
        duration = info.duration if info else None
        issues = ep.validate(req.input, source_duration=duration, allow_extra=True)
        if issues:
            detail = [i.as_detail() for i in issues]
            self._finish_error(req, 422, issues[0].msg, issues[0].type, {"detail": detail})
            return
        if self._fault_ended(req):
            return
        spec = catalog.expected_output(ep, full, info.size if info else None, duration)
        dw, dh = self.config.output_skew_px
        spec = catalog.OutputSpec(spec.width + dw, spec.height + dh, spec.duration)
        path = await self.producer.render(ep, full, inputs, spec)
        f = self.store.reserve(f"{req.id[:8]}_output.mp4", "video/mp4")
        os.link(path, f.path)
        self.store.finish(f)
        req.log("Output uploaded")
        self._bill(req, full, duration)
        req.output = {
            "video": {
                "url": self.store.url(req.base_url, f),
                "content_type": "video/mp4",
                "file_name": f.name,
                "file_size": f.size,
            }
        }
        self._complete(req, 200, req.output)

    def _fault_ended(self, req: Request) -> bool:
        """Play a `refuse` or `fail` fault planned for this submission; True when one ended the run."""
        n = self._submits_per_input.get(req.input_hash, 1)
        if self.faults.fires("refuse", req.input_hash, n):
            self._finish_error(
                req,
                422,
                "The request was flagged by the content policy",
                "content_policy_violation",
                {
                    "detail": [
                        {
                            "loc": ["body", "prompt"],
                            "msg": "flagged by the content policy",
                            "type": "content_policy_violation",
                        }
                    ]
                },
            )
            return True
        if self.faults.fires("fail", req.input_hash, n):
            self._finish_error(
                req,
                503,
                "Runner disconnected",
                "runner_disconnected",
                {"detail": "Runner disconnected", "error_type": "runner_disconnected"},
            )
            return True
        return False

    def _bill(self, req: Request, full: dict[str, Any], duration: Decimal | None) -> None:
        """Only a successful run is billed: one ledger entry, at the price table's base unit price."""
        ep = req.endpoint
        est = self.prices.estimate(ep, full, duration)
        entry = self.prices.entry(ep.id)
        base = entry.unit_price_micro(None)
        units = _plain(Decimal(est.micro_usd) / base)
        self.ledger.append(Billed(req.id, ep.id, entry.unit, units, base, est.micro_usd, time.time()))
        req.billable_units, req.cost_micro_usd = units, est.micro_usd

    # ------------------------------------------------------------------ endings

    def _complete(self, req: Request, status: int, body: Any) -> None:
        self.open_requests -= 1
        req.state, req.completed_at = COMPLETED, time.time()
        req.result_status, req.result_body = status, body
        expire = self.faults.fires("expire", req.id)
        req.expires_at = req.completed_at + (0.0 if expire else self.config.result_ttl_s)
        req.log(
            "Request completed" if req.error is None else f"Request failed: {req.error}",
            "INFO" if req.error is None else "ERROR",
        )
        if req.webhook_url:
            ok = req.error is None
            body_bytes = webhooks.payload(req.id, ok, body, None if ok else f"Invalid status code: {status}")
            task = asyncio.create_task(
                webhooks.deliver(
                    self.signer,
                    req.webhook_url,
                    req.id,
                    body_bytes,
                    attempts=WEBHOOK_ATTEMPTS,
                    retry_s=self.config.scaled(WEBHOOK_RETRY_S) or 0.05,
                    log=self.webhook_log,
                )
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _finish_error(self, req: Request, status: int, error: str, error_type: str, body: Any) -> None:
        req.error, req.error_type = error, error_type
        self._complete(req, status, body)

    def _finish_cancelled(self, req: Request) -> None:
        # fal's request-errors page: `client_cancelled`, "The request was cancelled by the client",
        # typical status 499, body {"detail": <string>, "error_type": …} and the same value in
        # X-Fal-Error-Type (https://fal.ai/docs/documentation/model-apis/request-errors).
        self.open_requests -= 1
        req.cancelled = True
        req.error, req.error_type = "Request was cancelled", "client_cancelled"
        req.state, req.completed_at = COMPLETED, time.time()
        req.result_status = 499
        req.result_body = {"detail": "Request was cancelled", "error_type": "client_cancelled"}
        req.expires_at = req.completed_at + self.config.result_ttl_s
        req.log("Request cancelled", "WARN")

    # ------------------------------------------------------------------ views

    def status_body(self, req: Request, with_logs: bool) -> dict[str, Any]:
        base = f"{req.base_url}/{_owner_alias(req.endpoint.id)}/requests/{req.id}"
        body: dict[str, Any] = {
            "status": req.state,
            "request_id": req.id,
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }
        if req.state == IN_QUEUE:
            body["queue_position"] = self.position(req)
        else:
            body["logs"] = list(req.logs) if with_logs else None
        if req.state == COMPLETED:
            inference = (req.completed_at or 0) - (req.started_at or req.completed_at or 0)
            body["metrics"] = {"inference_time": round(inference, 3) if req.started_at else None}
            if req.error is not None:
                body["error"], body["error_type"] = req.error, req.error_type
        return body

    def inspection(self) -> list[dict[str, Any]]:
        rows = []
        for row in self.received:
            req = self.requests.get(row["request_id"]) if row["request_id"] else None
            if req is not None:
                row = {
                    **row,
                    "state": "CANCELLED" if req.cancelled else req.state,
                    "billable_units": f"{req.billable_units:f}" if req.billable_units is not None else None,
                    "cost_usd": _usd(req.cost_micro_usd) if req.cost_micro_usd is not None else None,
                    "error": req.error,
                    "error_type": req.error_type,
                    "started_at": iso(req.started_at) if req.started_at is not None else None,
                    "completed_at": iso(req.completed_at) if req.completed_at is not None else None,
                }
            rows.append(row)
        return rows


def _owner_alias(endpoint_id: str) -> str:
    return "/".join(endpoint_id.split("/")[:2])


def _plain(value: Decimal) -> Decimal:
    """Drop trailing zeros without switching to an exponent: 10.000 → 10, 1.50 → 1.5."""
    value = value.normalize()
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value


def _usd(micro: int) -> str:
    return f"{_plain(Decimal(micro) / 1_000_000):f}"
