"""The worker process: opens models, store and Redis once, runs N consumer loops, shuts down gracefully.

Its own background work: the heartbeat (leases, in-flight jobs kept from looking idle, long-dead
consumers pruned) and the listener that stops a cancelled generation at once.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from contextlib import AsyncExitStack

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from core.events import EventWriter
from core.heartbeats import alive_workers
from core.keys import Keys
from core.loop import cancel
from core.redis import connect
from core.settings import Settings
from workers.answers import QueryPipeline
from workers.consumer import Consumer
from workers.embedder import Embedder, create_embedder
from workers.generator import Generator, create_generator
from workers.indexer import Indexer
from workers.leases import HEARTBEAT_S, NameLeases
from workers.loop import ConsumerLoop
from workers.metrics import Metrics, WorkerMetrics
from workers.recovery import Recovery
from workers.reranker import Reranker, create_reranker
from workers.sparse import Bm25Encoder
from workers.store import VectorStore, open_store
from workers.store.edge import EdgeStore
from workers.store.optimizer import Optimizer

log = structlog.get_logger("workers")

#: Consumers idle this long with nothing pending are removed from the group.
DEAD_CONSUMER_MS = 24 * 3600 * 1000


async def wait_for_redis(redis: Redis, url: str, stopping: asyncio.Event, timeout_s: float = 60.0) -> None:
    """Redis may still be starting (the run command starts everything at once): retry for a while."""
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while True:
        try:
            await redis.ping()
            return
        except (RedisConnectionError, OSError) as exc:
            if time.monotonic() > deadline or stopping.is_set():
                raise ConnectionError(f"Redis at {url} is unreachable: {exc}") from None
            log.info("waiting_for_redis", url=url, retry_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


class Worker:
    def __init__(self, settings: Settings, *, concurrency: int | None = None, burst: bool = False) -> None:
        self.settings = settings
        self.concurrency = concurrency or settings.worker.concurrency
        self.burst = burst
        self.keys = Keys(settings.redis.prefix)
        self.stopping = asyncio.Event()
        #: Set once models, store and consumer groups are ready.
        self.ready = asyncio.Event()
        self.metrics: Metrics | None = None
        #: What the process exports on /metrics (RAG_WORKER_METRICS_PORT).
        self.exported = WorkerMetrics()
        self.loops: list[ConsumerLoop] = []

    def stop(self) -> None:
        """Stop taking work; in-flight jobs get the grace period."""
        if not self.stopping.is_set():
            log.info("worker_stopping", grace_s=self.settings.worker.shutdown_grace_s)
        self.stopping.set()

    async def run(self, *, install_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        async with AsyncExitStack() as stack:
            exported, worker = self.exported, self.settings.worker
            if worker.metrics_port:  # first: a port already taken stops the process before the models load
                stack.push_async_callback(exported.serve(worker.metrics_host, worker.metrics_port))
            watching = asyncio.create_task(exported.watch_event_loop())
            stack.push_async_callback(cancel, watching)
            redis = connect(self.settings.redis, on_error=exported.redis_error)
            stack.push_async_callback(redis.aclose)
            await wait_for_redis(redis, self.settings.redis.url, self.stopping)
            embedder = exported.metered(await create_embedder(self.settings.embedder))
            stack.push_async_callback(embedder.aclose)
            bm25 = Bm25Encoder()
            store = await open_store(self.settings, embedder.dim, bm25)
            stack.push_async_callback(store.aclose)
            if isinstance(store, EdgeStore):
                # HNSW graphs for the embedded shard, built in a child process as points come in.
                optimizer = asyncio.create_task(
                    Optimizer(store, threshold=self.settings.retrieval.optimize_points).run())
                stack.push_async_callback(cancel, optimizer)
            generator = create_generator(self.settings.llm)
            stack.push_async_callback(generator.aclose)
            reranker = create_reranker(self.settings.reranker)
            if reranker is not None:
                stack.push_async_callback(reranker.aclose)
            events = EventWriter(redis, self.keys, self.settings.limits)
            metrics = self.metrics = Metrics(redis, self.keys.metrics, exported)
            leases = NameLeases(redis, self.keys)
            names = await leases.claim_names(self.concurrency)
            stack.push_async_callback(leases.release)
            loops = self.loops = [
                self._consumer_loop(Consumer(redis, self.keys, name, metrics=exported), embedder=embedder, store=store,
                                    generator=generator, events=events, metrics=metrics, bm25=bm25, reranker=reranker)
                for name in names
            ]
            await loops[0].consumer.ensure_groups()
            listener = asyncio.create_task(self._listen_for_cancels(redis, loops))
            stack.push_async_callback(cancel, listener)
            heartbeat = asyncio.create_task(self._heartbeat(leases, loops))
            stack.push_async_callback(cancel, heartbeat)
            log.info(
                "worker_started",
                consumers=[c.consumer.name for c in loops],
                store="qdrant-server" if self.settings.qdrant.url else f"qdrant-edge:{self.settings.qdrant_path}",
                embedder=self.settings.embedder.backend,
                llm=self.settings.llm.backend,
                burst=self.burst,
            )
            # Models, tokenizer, store and modules live as long as the process: out of the
            # collector's sight, so that its full passes stop pausing every answer (p99 halved).
            gc.freeze()
            self.ready.set()
            await asyncio.gather(*(c.run() for c in loops))
            await metrics.flush()
            log.info("worker_stopped", **dict(metrics.local))


    def _consumer_loop(self, consumer: Consumer, *, embedder: Embedder, store: VectorStore, generator: Generator,
                       events: EventWriter, metrics: Metrics, bm25: Bm25Encoder,
                       reranker: Reranker | None) -> ConsumerLoop:
        queries = QueryPipeline(settings=self.settings, embedder=embedder, store=store, generator=generator,
                                events=events, consumer=consumer, metrics=metrics, bm25=bm25, reranker=reranker)
        indexer = Indexer(embedder=embedder, store=store, events=events, consumer=consumer, metrics=metrics,
                          bm25=bm25)
        recovery = Recovery(consumer, self.keys, self.settings.worker, queries=queries, events=events,
                            in_progress=self._in_progress, metrics=metrics.exported)
        return ConsumerLoop(consumer, self.keys, self.settings.worker, queries=queries, indexer=indexer,
                            recovery=recovery, stopping=self.stopping, burst=self.burst, metrics=metrics.exported)

    def _in_progress(self) -> set[bytes]:
        """Entry ids of the messages any consumer of this process is handling now."""
        return set().union(*(loop.in_progress() for loop in self.loops))

    async def _heartbeat(self, leases: NameLeases, loops: list[ConsumerLoop]) -> None:
        """Renew leases, keep in-flight jobs from looking idle, and forget long-dead consumers."""
        touch_every = max(self.settings.worker.claim_idle_ms / 3000, 0.2)
        last_touch = last_prune = 0.0
        while True:
            try:
                now = time.monotonic()
                await leases.beat()
                if now - last_touch >= touch_every:
                    last_touch = now
                    for loop in loops:
                        await loop.touch_inflight()
                if now - last_prune >= 60:
                    last_prune = now
                    alive = set(await alive_workers(leases.redis, self.keys))
                    removed = await loops[0].consumer.prune_consumers(idle_ms=DEAD_CONSUMER_MS, keep=alive)
                    if removed:
                        log.info("pruned_dead_consumers", consumers=removed)
            except (RedisError, OSError) as exc:
                log.warning("heartbeat_failed", error=str(exc))
            await asyncio.sleep(min(HEARTBEAT_S, touch_every))

    async def _listen_for_cancels(self, redis: Redis, loops: list[ConsumerLoop]) -> None:
        """Job ids published on the cancel channel stop their generation within milliseconds."""
        backoff = 0.1
        while True:
            try:
                async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.keys.cancels)
                    backoff = 0.1
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            job_id = message["data"].decode()
                            for loop in loops:
                                loop.cancel_job(job_id)
            except (RedisError, OSError) as exc:
                # Missed messages are safe: every worker write checks the job's cancel flag.
                log.warning("cancel_listener_error", error=str(exc), retry_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


