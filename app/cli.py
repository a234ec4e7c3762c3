"""``python -m app``: serve the API with uvicorn on RAG_API_HOST:RAG_API_PORT."""

from __future__ import annotations

import signal
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from core.settings import load_or_exit

if TYPE_CHECKING:
    from app.main import Services


def main() -> int:
    settings = load_or_exit()
    from app.main import Services, create_app  # after the settings: a bad one stops the process at once

    services = Services(settings)
    config = uvicorn.Config(
        create_app(settings, services),
        host=settings.api.host,
        port=settings.api.port,
        log_level=settings.log_level,
        # A last resort: streams are ended cleanly first (see GracefulServer).
        timeout_graceful_shutdown=5,
    )
    server = GracefulServer(config, services)
    # uvicorn installs its own SIGINT/SIGTERM handlers while it serves, then puts these back and raises
    # the signal it caught again, for them: a stop asked for is a clean exit (status 0, as the worker's).
    # A signal before it serves stops it as soon as it has started.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, server.stop_asked)
    server.run()
    return 0


class GracefulServer(uvicorn.Server):
    """On SIGTERM/SIGINT, end every open SSE stream cleanly before uvicorn drains connections.

    Clients see a finished response and resume elsewhere with Last-Event-ID.
    """

    def __init__(self, config: uvicorn.Config, services: Services) -> None:
        super().__init__(config)
        self._services = services

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._services.end_streams()
        super().handle_exit(sig, frame)

    def stop_asked(self, sig: int, frame: FrameType | None) -> None:
        self.should_exit = True
