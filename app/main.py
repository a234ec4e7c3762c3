"""The one assembly point: ``create_app(settings)`` (also a uvicorn factory)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from redis.exceptions import RedisError

from app.dead import DeadLetterController
from app.documents import DocumentController, fail_interrupted_uploads
from app.errors import EXCEPTION_HANDLERS
from app.hub import EventHub
from app.jobs import Jobs
from app.routes import QueryController, healthz, readyz
from core.logs import configure_logging
from core.redis import connect
from core.settings import Settings, load_settings

log = structlog.get_logger("app")

#: Connections for short commands (submit, status, a stream's first look); callers past it wait.
#: With the hub's one connection, that bounds what an API process holds, whatever the open streams.
API_REDIS_CONNECTIONS = 8
#: A short command Redis has not answered in this long gets its 503 (the longest it blocks is 1 s).
API_REPLY_TIMEOUT_S = 5.0


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # A bounded pool for short commands, and one connection for the hub's blocking XREAD:
        # open SSE streams hold no connection of their own.
        redis = connect(settings.redis, max_connections=API_REDIS_CONNECTIONS, reply_timeout_s=API_REPLY_TIMEOUT_S)
        reader = connect(settings.redis, max_connections=1)
        hub = EventHub(redis, reader)
        app.state.jobs = Jobs(redis, settings)
        app.state.hub = hub
        app.state.loop = asyncio.get_running_loop()
        await hub.start()
        try:  # uploads a killed API left half-way end with a clear error
            await fail_interrupted_uploads(redis, settings)
        except (RedisError, OSError) as exc:  # Redis down at start: /readyz says so; the next start tries again
            log.warning("interrupted_uploads_unchecked", error=str(exc))
        gc.freeze()  # what startup loaded lives as long as the process: kept out of full GC passes
        try:
            yield
        finally:
            await hub.stop()
            await reader.aclose()
            await redis.aclose()

    return Litestar(
        route_handlers=[QueryController, DeadLetterController, DocumentController, healthz, readyz],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(title="RAG service", version="0.1.0", path="/schema"),
        request_max_body_size=1024 * 1024,
    )
