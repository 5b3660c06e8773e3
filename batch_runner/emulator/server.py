"""Run the emulator: in a background thread on a free port (tests, demo) or in the foreground."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import uvicorn

from .app import create_app
from .config import EmulatorConfig
from .web import DropConnectionError

START_TIMEOUT_S = 20.0


class _HideDrops(logging.Filter):
    """Injected connection drops are on purpose: keep them out of the server's error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, DropConnectionError):
                return False
            exc = (
                exc.__cause__ or exc.__context__ or (exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) else None)
            )
        return True


def _uvicorn(config: EmulatorConfig, log_level: str) -> uvicorn.Server:
    logging.getLogger("uvicorn.error").addFilter(_HideDrops())
    app = create_app(config)
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=log_level,
            access_log=False,
            lifespan="on",
            timeout_keep_alive=30,
        )
    )


class EmulatorServer:
    """An emulator on a background thread; `url` is its base URL for every fal host."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._server = _uvicorn(config, "warning")
        self._thread = threading.Thread(target=self._server.run, name="fal-emulator", daemon=True)
        self.url = ""

    @property
    def app(self) -> Any:
        return self._server.config.app

    def start(self) -> EmulatorServer:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start on {self.config.host}:{self.config.port}")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.config.host}:{port}"
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_emulator(**settings: Any) -> EmulatorServer:
    """Start an emulator on a free port (port 0 by default) and return it running."""
    return EmulatorServer(EmulatorConfig(**settings)).start()


def serve(config: EmulatorConfig, on_ready: Any = None) -> None:
    """Run in the foreground until interrupted; `on_ready(url)` is called once listening."""
    server = _uvicorn(config, "warning")
    if on_ready is not None:
        original = server.startup

        async def startup(sockets: Any = None) -> None:
            await original(sockets=sockets)
            port = server.servers[0].sockets[0].getsockname()[1] if server.servers else config.port
            on_ready(f"http://{config.host}:{port}")

        server.startup = startup  # type: ignore[method-assign]
    server.run()
