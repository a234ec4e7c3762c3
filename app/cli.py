"""``python -m app``: serve the API with uvicorn on RAG_API_HOST:RAG_API_PORT."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Generator
from types import FrameType

import uvicorn
from litestar import Litestar

from core.settings import load_or_exit


def main() -> int:
    settings = load_or_exit()
    from app.main import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.api.host,
        port=settings.api.port,
        log_level=settings.log_level,
        # A last resort: streams are ended cleanly first (see GracefulServer).
        timeout_graceful_shutdown=5,
    )
    GracefulServer(config, app).run()
    return 0


class GracefulServer(uvicorn.Server):
    """On SIGTERM/SIGINT, end every open SSE stream cleanly before uvicorn drains connections.

    Clients see a finished response and resume elsewhere with Last-Event-ID.
    """

    def __init__(self, config: uvicorn.Config, app: Litestar) -> None:
        super().__init__(config)
        self._app = app

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn re-raises the signal after shutting down (exit status -15); a clean
        # shutdown here exits 0, as the worker does.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        hub = getattr(self._app.state, "hub", None)
        loop = getattr(self._app.state, "loop", None)
        if hub is not None and loop is not None:
            loop.call_soon_threadsafe(hub.close_all)
        super().handle_exit(sig, frame)
