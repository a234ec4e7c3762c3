"""The API process's Prometheus metrics and its ``GET /metrics``: responses by route and status, the SSE streams
open, the job streams' backlog (read from Redis at each scrape), and what every process exports (core.metrics).

Hand-written rather than Litestar's PrometheusMiddleware: that one keeps its metrics in the library's global
registry (class-level), so several apps in one process (the tests) would count into each other. And no route
middleware at all: any makes Litestar wrap every route in one more exception handler, which wraps ``send``
again for every message of every response; responses are counted by a ``before_send`` hook instead, and the
open SSE streams read from the event hub at each scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from litestar import Request, Response, get
from litestar.plugins import InitPluginProtocol
from prometheus_client import Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from core.keys import GROUP, stream_label
from core.loop import cancel
from core.metrics import ProcessMetrics

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.config.app import AppConfig
    from litestar.types import Message, Scope
    from prometheus_client.core import Metric
    from redis.asyncio import Redis

    from app.jobs import Jobs
    from core.hub import EventHub
    from core.keys import Keys

log = structlog.get_logger("app.metrics")

#: A scrape waits this long at most for Redis; past it the backlog is left out of that scrape.
BACKLOG_TIMEOUT_S = 2.0
#: Methods counted as themselves; any other is counted as ``other`` (a client picks them: no label per whim).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The route label of a request that matched no route (404, 405 from the router).
UNMATCHED = "unmatched"


class Running(Protocol):
    """What the app's services hold once it runs (app.main.Services)."""

    jobs: Jobs
    hub: EventHub


class Backlog(Collector):
    """The job streams' backlog as read at the last scrape: lag (messages no consumer has read yet) and pending
    (read, not acknowledged), and the dead letters. Left out of a scrape when Redis could not be read."""

    def __init__(self) -> None:
        self._lag: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._dead: int | None = None

    async def refresh(self, redis: Redis, keys: Keys, on_timeout: Callable[[BaseException], None]) -> None:
        """Read the backlog (one round trip); a Redis that has not answered in BACKLOG_TIMEOUT_S is told to
        ``on_timeout`` (the client reports its own errors)."""
        streams = (keys.queries, keys.ingest)
        try:
            async with asyncio.timeout(BACKLOG_TIMEOUT_S), redis.pipeline(transaction=False) as pipe:
                for stream in streams:
                    pipe.xinfo_groups(stream)
                    pipe.xlen(stream)
                pipe.xlen(keys.dead)
                replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TimeoutError) as exc:
            self._lag, self._pending, self._dead = {}, {}, None
            if isinstance(exc, TimeoutError):
                on_timeout(exc)
            log.warning("backlog_unread", error=str(exc) or type(exc).__name__)
            return
        self._lag, self._pending = {}, {}
        for i, stream in enumerate(streams):
            groups, length = replies[2 * i], replies[2 * i + 1]
            length = int(length) if isinstance(length, int) else 0
            # No group yet (no worker has started, or no stream at all): nobody has read any of it.
            group = next((g for g in groups if _str(g["name"]) == GROUP), None) if isinstance(groups, list) else None
            pending = int(group["pending"]) if group else 0
            lag = group.get("lag") if group else length
            # Redis cannot always say (the group was set at an arbitrary id): acknowledged messages are deleted,
            # so the stream's length is what waits plus what is pending.
            self._lag[stream_label(stream)] = int(lag) if lag is not None else max(0, length - pending)
            self._pending[stream_label(stream)] = pending
        dead = replies[-1]
        self._dead = int(dead) if isinstance(dead, int) else None

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        return self._families(self._lag, self._pending, self._dead)

    @staticmethod
    def _families(lag: dict[str, int] | None = None, pending: dict[str, int] | None = None,
                  dead: int | None = None) -> list[Metric]:
        lags = GaugeMetricFamily("rag_stream_lag", "Messages of a job stream no consumer has read yet (at the scrape)",
                                 labels=["stream"])
        pendings = GaugeMetricFamily("rag_stream_pending", "Messages of a job stream read by a consumer and not yet "
                                     "acknowledged: being worked on, or left by a consumer that died", labels=["stream"])
        for stream, value in (lag or {}).items():
            lags.add_metric([stream], value)
        for stream, value in (pending or {}).items():
            pendings.add_metric([stream], value)
        families: list[Metric] = [lags, pendings]
        if dead is not None or lag is None:
            dead_letters = GaugeMetricFamily("rag_dead_letters", "Jobs in the dead-letter stream")
            if dead is not None:
                dead_letters.add_metric([], dead)
            families.append(dead_letters)
        return families


class ApiMetrics(ProcessMetrics):
    """What an API process exports, and the Litestar plugin (``plugin``) that measures and serves it."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = Counter("rag_http_requests", "HTTP responses, by route (its path template), method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.sse_open = Gauge("rag_sse_streams_open", "SSE responses streaming now (job events, /v1/ask, streamed "
                              "chat completions), as the event hub relays them", registry=self.registry)
        self._responses: dict[tuple[str, str, int], Counter] = {}
        self.backlog = Backlog()
        self.registry.register(self.backlog)

    def plugin(self, services: Running) -> MetricsPlugin:
        """The plugin for ``Litestar(plugins=...)``; ``services`` holds the Redis client, keys and hub once the app
        runs."""
        self.sse_open.set_function(lambda: services.hub.sse_streams if hasattr(services, "hub") else 0)
        return MetricsPlugin(self, lambda: services.jobs)

    async def before_send(self, message: Message, scope: Scope) -> None:
        """Count each response as it starts, whichever part of the app sent it: a route, an error handler, the
        router's own 404."""
        if message["type"] == "http.response.start":
            method = scope.get("method", "")
            labels = (scope.get("path_template") or UNMATCHED, method if method in METHODS else "other",
                      message["status"])
            counter = self._responses.get(labels)
            if counter is None:  # labels() takes a lock and formats every value: once per series, not per response
                counter = self._responses[labels] = self.requests.labels(*labels)
            counter.inc()


class MetricsPlugin(InitPluginProtocol):
    """Adds ``GET /metrics``, the response counting, and the event-loop lag watch to an app."""

    def __init__(self, metrics: ApiMetrics, jobs: Callable[[], Jobs]) -> None:
        self._metrics = metrics
        self._jobs = jobs

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        metrics, jobs = self._metrics, self._jobs

        @get("/metrics", tags=["monitoring"], summary="This API process's metrics, in Prometheus text format",
             media_type="text/plain")
        async def metrics_route(request: Request[Any, Any, Any]) -> Response[bytes]:
            current = jobs()
            await metrics.backlog.refresh(current.redis, current.keys, metrics.redis_error)
            body, content_type = metrics.exposition(request.headers.get("accept"))
            return Response(body, media_type=content_type)

        @contextlib.asynccontextmanager
        async def watching(_: Litestar) -> AsyncIterator[None]:
            task = asyncio.create_task(metrics.watch_event_loop())
            try:
                yield
            finally:
                await cancel(task)

        app_config.route_handlers.append(metrics_route)
        app_config.before_send.append(metrics.before_send)
        app_config.lifespan.append(watching)
        return app_config


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
