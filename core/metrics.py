"""What every process exports to Prometheus: a registry of its own, Redis errors, event-loop lag, the text format.

The API (app/metrics.py) and each worker process (workers/metrics.py) build on :class:`ProcessMetrics`; every
metric name is defined once, in one of these three modules. A registry per process object, not the library's
global one: the tests run several apps and workers in one process, each with its own counts.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from redis.exceptions import TimeoutError as RedisTimeoutError

# No `_created` series beside every counter and histogram: they would double what a scrape sends, and
# Prometheus detects counter resets without them.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: How often the event loop's lag is measured: a sleep this long, and how late it woke.
LOOP_LAG_INTERVAL_S = 0.25
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ProcessMetrics:
    """A process's registry, with the process collectors (CPU, memory, file descriptors, GC) and the metrics
    every process of ours has."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.redis_errors = Counter(
            "rag_redis_errors", "Failed attempts to talk to Redis (each retry counts), by kind: connection or timeout",
            ["kind"], registry=self.registry)
        self.loop_lag = Histogram(
            "rag_event_loop_lag_seconds",
            f"How late the event loop ran a task due after {LOOP_LAG_INTERVAL_S} s: time it spent on other work",
            buckets=LOOP_LAG_BUCKETS, registry=self.registry)

    def redis_error(self, exc: BaseException) -> None:
        """Count one failed attempt (core.redis.connect calls it with each error)."""
        timeout = isinstance(exc, RedisTimeoutError | TimeoutError)
        self.redis_errors.labels(kind="timeout" if timeout else "connection").inc()

    async def watch_event_loop(self, interval_s: float = LOOP_LAG_INTERVAL_S) -> None:
        """Measure the loop's lag until cancelled: a sleep, and how much later than asked it ends."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(interval_s)
            self.loop_lag.observe(max(0.0, loop.time() - start - interval_s))

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry's samples and their content type: Prometheus text, or OpenMetrics when ``accept`` asks."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

