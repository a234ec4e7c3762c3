"""The one assembly point: ``create_app(settings)`` (also a uvicorn factory), and the services it injects."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from litestar import Litestar
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.apikeys import KeyController
from app.auth import AuthMiddleware, Guard, refusal
from app.compat import Compat, OpenAIController
from app.dead import DeadLetterController
from app.documents import DocumentController
from app.errors import EXCEPTION_HANDLERS
from app.jobs import Jobs
from app.metrics import ApiMetrics
from app.pages import Pages
from app.routes import QueryController, healthz, readyz
from app.tokens import LinkTokens
from app.uploads import Uploads
from app.web import index
from core.apikeys import ApiKeys
from core.hub import EventHub
from core.keys import Keys
from core.logs import configure_logging
from core.redis import connect
from core.settings import Settings, load_or_exit
from ingest.documents import Documents

log = structlog.get_logger("app")

#: Connections for short commands (submit, status, a stream's first look); callers past it wait.
#: With the hub's one connection, that bounds what an API process holds, whatever the open streams.
API_REDIS_CONNECTIONS = 8
#: A short command Redis has not answered in this long gets its 503 (the longest it blocks is 1 s).
API_REPLY_TIMEOUT_S = 5.0


class Services:
    """What the routes use, opened and closed by the app's lifespan and injected into handlers by name."""

    jobs: Jobs
    hub: EventHub
    documents: Documents
    uploads: Uploads
    compat: Compat
    pages: Pages
    api_keys: ApiKeys
    guard: Guard

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        #: What this process exports on GET /metrics.
        self.metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(self, _: Litestar) -> AsyncIterator[None]:
        # A bounded pool for short commands, and one connection for the hub's blocking XREAD:
        # open SSE streams hold no connection of their own.
        redis = connect(self.settings.redis, max_connections=API_REDIS_CONNECTIONS,
                        reply_timeout_s=API_REPLY_TIMEOUT_S, on_error=self.metrics.redis_error)
        reader = connect(self.settings.redis, max_connections=1, on_error=self.metrics.redis_error)
        self.hub = EventHub(redis, reader)
        # API keys: every request's key looked up in Redis (app.auth); job events tokens signed (app.tokens).
        self.api_keys = ApiKeys(redis, Keys(self.settings.redis.prefix), self.settings.limits)
        tokens = LinkTokens(redis, Keys(self.settings.redis.prefix), self.settings.api.events_token_ttl_s,
                            self.settings.api.page_link_ttl_s)
        self.guard = Guard(self.settings, self.api_keys, tokens)
        await self._refuse_unsafe_start(redis)
        self.jobs = Jobs(redis, self.settings, self.hub, tokens)
        self.documents = Documents(redis, self.settings)
        self.uploads = Uploads(redis, self.settings, tokens)
        self.compat = Compat(self.jobs)
        self.pages = Pages(self.jobs, self.documents)
        self._loop = asyncio.get_running_loop()
        await self.hub.start()
        try:  # uploads a killed API left half-way end with a clear error
            await self.uploads.fail_interrupted()
        except (RedisError, OSError) as exc:  # Redis down at start: /readyz says so; the next start tries again
            log.warning("interrupted_uploads_unchecked", error=str(exc))
        gc.freeze()  # what startup loaded lives as long as the process: kept out of full GC passes
        try:
            yield
        finally:
            self._loop = None
            await self.hub.stop()
            await reader.aclose()
            await redis.aclose()

    async def _refuse_unsafe_start(self, redis: Redis) -> None:
        """No key, on an address others reach: stop before serving (``python -m app`` checks it first too)."""
        try:
            problem = refusal(self.settings, await self.api_keys.any())
        except (RedisError, OSError) as exc:  # Redis down: requests are refused unless served on loopback
            log.warning("api_keys_unchecked", error=str(exc))
            return
        if problem is not None:
            await redis.aclose()
            raise RuntimeError(problem)

    def _guard(self) -> Guard:
        return self.guard

    def dependencies(self) -> dict[str, Provide]:
        # One per handler: Litestar resolves a handler's several dependencies in a task group, a task each,
        # on every request (a minimal handler took 270 µs a request with two, 80 with one).
        return {
            "jobs": Provide(self._jobs, sync_to_thread=False, use_cache=True),
            "documents": Provide(self._documents, sync_to_thread=False, use_cache=True),
            "uploads": Provide(self._uploads, sync_to_thread=False, use_cache=True),
            "compat": Provide(self._compat, sync_to_thread=False, use_cache=True),
            "pages": Provide(self._pages, sync_to_thread=False, use_cache=True),
            "api_keys": Provide(self._api_keys, sync_to_thread=False, use_cache=True),
        }

    def _jobs(self) -> Jobs:
        return self.jobs

    def _documents(self) -> Documents:
        return self.documents

    def _uploads(self) -> Uploads:
        return self.uploads

    def _compat(self) -> Compat:
        return self.compat

    def _pages(self) -> Pages:
        return self.pages

    def _api_keys(self) -> ApiKeys:
        return self.api_keys

    def end_streams(self) -> None:
        """End every open SSE stream now (shutdown): clients resume elsewhere with Last-Event-ID.
        Safe from a signal handler."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.hub.close_all)


def create_app(settings: Settings | None = None, services: Services | None = None) -> Litestar:
    settings = settings or load_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    services = services or Services(settings)
    return Litestar(
        route_handlers=[QueryController, DeadLetterController, DocumentController, OpenAIController, healthz, readyz,
                        index, KeyController],
        lifespan=[services.lifespan],
        dependencies=services.dependencies(),
        exception_handlers=EXCEPTION_HANDLERS,
        # Every route but /healthz, /readyz, /metrics and / needs an API key once one exists (app.auth).
        middleware=[DefineMiddleware(AuthMiddleware, guard=services._guard)],
        openapi_config=OpenAPIConfig(title="RAG service", version="0.1.0", path="/schema"),
        plugins=[services.metrics.plugin(services)],
        request_max_body_size=1024 * 1024,
    )
