"""The worker process: opens models, store and Redis once, runs N consumer loops, shuts down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from core.errors import RagError
from core.events import EventWriter, JobCancelled
from core.heartbeats import alive_workers
from core.keys import Keys
from core.loop import cancel
from core.protocol import Restart
from core.redis import connect
from core.settings import Settings
from workers.answers import Prepared, QueryPipeline
from workers.batcher import Batcher
from workers.consumer import Consumer, Delivery
from workers.embedder import Embedder, create_embedder
from workers.generator import Generator, create_generator
from workers.indexer import Indexer
from workers.metrics import Metrics
from workers.registry import HEARTBEAT_S, Registry
from workers.reranker import Reranker, create_reranker
from workers.sparse import Bm25Encoder
from workers.store import VectorStore, open_store
from workers.store.edge import EdgeStore
from workers.store.optimizer import Optimizer

log = structlog.get_logger("workers")

#: While an ingest batch is indexed in the background, how often the loop looks for queries.
INDEXING_POLL_S = 0.01

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
            redis = connect(self.settings.redis)
            stack.push_async_callback(redis.aclose)
            await wait_for_redis(redis, self.settings.redis.url, self.stopping)
            embedder = await create_embedder(self.settings.embedder)
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
            metrics = self.metrics = Metrics(redis, self.keys.metrics)
            registry = Registry(redis, self.keys)
            names = await registry.claim_names(self.concurrency)
            stack.push_async_callback(registry.release)
            loops = self.loops = [
                ConsumerLoop(
                    self,
                    Consumer(redis, self.keys, name),
                    embedder=embedder,
                    store=store,
                    generator=generator,
                    events=events,
                    metrics=metrics,
                    bm25=bm25,
                    reranker=reranker,
                )
                for name in names
            ]
            await loops[0].consumer.ensure_groups()
            listener = asyncio.create_task(self._listen_for_cancels(redis, loops))
            stack.push_async_callback(cancel, listener)
            heartbeat = asyncio.create_task(self._heartbeat(registry, loops))
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


    async def _heartbeat(self, registry: Registry, loops: list[ConsumerLoop]) -> None:
        """Renew leases, keep in-flight jobs from looking idle, and forget long-dead consumers."""
        touch_every = max(self.settings.worker.claim_idle_ms / 3000, 0.2)
        last_touch = last_prune = 0.0
        while True:
            try:
                now = time.monotonic()
                await registry.beat()
                if now - last_touch >= touch_every:
                    last_touch = now
                    for loop in loops:
                        await loop.touch_inflight()
                if now - last_prune >= 60:
                    last_prune = now
                    alive = set(await alive_workers(registry.redis, self.keys))
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


class ConsumerLoop:
    """One consumer: read a batch, embed and search it, start its generations, repeat."""

    def __init__(
        self,
        worker: Worker,
        consumer: Consumer,
        *,
        embedder: Embedder,
        store: VectorStore,
        generator: Generator,
        events: EventWriter,
        metrics: Metrics,
        bm25: Bm25Encoder,
        reranker: Reranker | None,
    ) -> None:
        s = worker.settings.worker
        self.worker = worker
        self.consumer = consumer
        self.settings = s
        self.batcher = Batcher(consumer, worker.keys, wait_ms=s.batch_wait_ms, block_ms=s.block_ms)
        self.queries = QueryPipeline(
            settings=worker.settings, embedder=embedder, store=store, generator=generator,
            events=events, consumer=consumer, metrics=metrics, bm25=bm25, reranker=reranker,
        )
        self.indexer = Indexer(embedder=embedder, store=store, events=events, consumer=consumer, metrics=metrics,
                               bm25=bm25)
        self.inflight: set[asyncio.Task[None]] = set()
        self.by_job: dict[str, asyncio.Task[None]] = {}
        self.items: dict[str, Prepared] = {}
        self.indexing: asyncio.Task[None] | None = None
        self.indexing_deliveries: list[Delivery] = []
        #: Read and being worked on, not yet in ``items`` (a batch in retrieval) or indexed inline (claimed ingest).
        self.in_hand: dict[bytes, Delivery] = {}
        self.events = events
        self.cancelled: set[str] = set()
        self._last_claim = 0.0
        self.log = log.bind(consumer=consumer.name)

    async def run(self) -> None:
        try:
            await self._resume_own()
            await self._loop()
        finally:
            await self._drain()

    async def _loop(self) -> None:
        backoff = 0.1
        while not self.worker.stopping.is_set():
            try:
                await self._maybe_claim()
                free = self.settings.max_generations - len(self.inflight)
                if free <= 0:
                    await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                size = min(self.settings.batch_size, free)
                indexing = self.indexing is not None and not self.indexing.done()
                batch = await self.batcher.next(size, block=not self.worker.burst, ingest=not indexing,
                                                hold=bool(self.inflight))
                if batch.kind == "query":
                    await self._start_answers(batch.deliveries)
                elif batch.kind == "ingest":
                    # Indexed in the background: the loop goes on reading queries meanwhile.
                    self.indexing = asyncio.create_task(self._index(batch.deliveries))
                elif indexing:
                    # Look for queries every few ms, and take the next ingest batch once this one is in.
                    await asyncio.wait({self.indexing}, timeout=INDEXING_POLL_S)  # type: ignore[arg-type,type-var]
                elif self.worker.burst:
                    busy = self.inflight | ({self.indexing} if indexing and self.indexing else set())
                    if busy:
                        await asyncio.wait(busy, return_when=asyncio.FIRST_COMPLETED)
                    elif not self.batcher.holding:
                        self.log.info("burst_idle_exit")
                        return
                backoff = 0.1
            except (RagError, RedisError, OSError) as exc:
                # Transient (Redis, embedder, store): the jobs stay pending and are claimed again.
                self.log.warning("loop_error", error=str(exc), backoff_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception as exc:
                self.log.exception("loop_crash", error=repr(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _index(self, deliveries: list[Delivery]) -> None:
        self.indexing_deliveries = deliveries
        try:
            for delivery in deliveries:
                try:
                    await self.indexer.index(delivery)
                except Exception as exc:  # noqa: BLE001 - left pending: claimed again after claim_idle_ms
                    self.log.warning("index_failed", error=repr(exc), delivery=delivery.deliveries)
        finally:
            self.indexing_deliveries = []

    async def _maybe_claim(self) -> None:
        """Take over jobs whose consumer went silent; dead-letter those out of deliveries."""
        now = time.monotonic()
        if now - self._last_claim < max(self.settings.claim_idle_ms / 4000, 0.5):
            return
        self._last_claim = now
        keys = self.worker.keys
        for stream in (keys.queries, keys.ingest):
            claimed = await self.consumer.claim_stale(
                stream, min_idle_ms=self.settings.claim_idle_ms, count=self.settings.batch_size
            )
            if not claimed:
                continue
            # After a Redis outage longer than claim_idle_ms, live jobs look idle too (their
            # heartbeat touches failed): never take over one that is still being worked on.
            claimed = await self._not_in_progress(claimed)
            if not claimed:
                continue
            self.log.warning("claimed_stale", stream=stream, count=len(claimed))
            await self._take_up(stream, claimed)

    async def _resume_own(self) -> None:
        """At start: the jobs still pending under this consumer's name are orphans (the name's lease was
        free, or its holder gone), so they are resumed at once rather than claimed after claim_idle_ms."""
        for stream in (self.worker.keys.queries, self.worker.keys.ingest):
            own: list[Delivery] = []
            while page := await self.consumer.pending_own(stream, count=self.settings.batch_size,
                                                          after=own[-1].entry_id if own else None):
                own += page
            own = await self._drop_finished(own)
            if not own:
                continue
            self.log.warning("resumed_own", stream=stream, count=len(own))
            await self._announce(own)  # every client hears of the restart at once, before the batches run
            for start in range(0, len(own), self.settings.batch_size):
                await self._take_up(stream, own[start : start + self.settings.batch_size])

    async def _take_up(self, stream: str, claimed: list[Delivery]) -> None:
        """Jobs taken over from a consumer that is gone: answered (or indexed) again, or dead-lettered once
        they were delivered too often."""
        keys = self.worker.keys
        live: list[Delivery] = []
        for delivery in await self._drop_finished(claimed):
            if delivery.deliveries > self.settings.max_deliveries:
                await self.queries.fail(
                    delivery,
                    RagError(f"gave up after {delivery.deliveries - 1} deliveries", code="max_deliveries"),
                )
            else:
                live.append(delivery)
        if stream == keys.queries and live:
            await self._announce(live)
            await self._start_answers(live)
        if stream == keys.ingest:
            with self._holding(live):
                for delivery in live:
                    await self.indexer.index(delivery)

    async def _drop_finished(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Those of ``deliveries`` whose job has not ended. A worker killed between a job's terminal event
        and its acknowledgement leaves the job pending: taken up again, it would be answered twice."""
        queries = {d.job.id: d for d in deliveries if d.job is not None and d.stream == self.worker.keys.queries}
        finished = await self.events.finished(list(queries))
        for job_id in finished:
            await self.consumer.ack(queries[job_id])
        if finished:
            self.log.info("acknowledged_finished", count=len(finished))
        return [d for d in deliveries if d.job is None or d.job.id not in finished]

    async def _announce(self, deliveries: list[Delivery]) -> None:
        """The `restart` event of every taken-over query not yet told, in one round trip."""
        fresh = [d for d in deliveries if d.job is not None and d.stream == self.worker.keys.queries
                 and d.deliveries > 1 and not d.announced]
        await self.events.emit_each([(d.job.id, Restart(delivery=d.deliveries)) for d in fresh if d.job])
        for delivery in fresh:
            delivery.announced = True

    def handling(self) -> list[Delivery]:
        """The messages this consumer is handling now: answers, ingest batches, and those read but not started."""
        return [*(item.delivery for item in self.items.values()), *self.in_hand.values(),
                *self.indexing_deliveries, *self.batcher.held]

    def working_on(self) -> set[bytes]:
        """Entry ids of the messages this consumer is handling now."""
        return {d.entry_id for d in self.handling()}

    @contextlib.contextmanager
    def _holding(self, deliveries: list[Delivery]) -> Iterator[None]:
        self.in_hand.update((d.entry_id, d) for d in deliveries)
        try:
            yield
        finally:
            for delivery in deliveries:
                self.in_hand.pop(delivery.entry_id, None)

    async def _not_in_progress(self, claimed: list[Delivery]) -> list[Delivery]:
        """Those of ``claimed`` that no consumer of this process is handling, and whose job
        stream shows no event within claim_idle_ms (another worker would be writing them)."""
        ours = set().union(*(loop.working_on() for loop in self.worker.loops))
        rest = [d for d in claimed if d.entry_id not in ours]
        queries = [d for d in rest if d.job is not None and d.stream == self.worker.keys.queries]
        if not queries:
            return rest
        seconds, micros = await self.events.redis.time()
        now = int(seconds) * 1000 + int(micros) // 1000
        recent = set()
        for delivery in queries:
            assert delivery.job is not None
            last = await self.events.last_event_ms(delivery.job.id)
            if last is not None and now - last < self.settings.claim_idle_ms:
                recent.add(delivery.entry_id)
        if recent:
            self.log.warning("claim_skipped_alive", count=len(recent))
        return [d for d in rest if d.entry_id not in recent]

    async def _start_answers(self, deliveries: list[Delivery]) -> None:
        with self._holding(deliveries):  # retrieval can take long (a remote embedder, a reranker)
            prepared = await self.queries.prepare(deliveries)
        for item in prepared:
            assert item.delivery.job is not None
            self.items[item.delivery.job.id] = item  # before the task runs: the claim loop must see it
            task = asyncio.create_task(self._answer(item))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)

    async def touch_inflight(self) -> None:
        """Keep every message this consumer handles from looking idle: answers, and ingest batches too."""
        by_stream: dict[str, list[bytes]] = {}
        for delivery in self.handling():
            by_stream.setdefault(delivery.stream, []).append(delivery.entry_id)
        for stream, ids in by_stream.items():
            await self.consumer.touch(stream, ids)

    def cancel_job(self, job_id: str) -> None:
        """Stop a generation now (its client cancelled): the LLM stream is closed, not drained."""
        task = self.by_job.get(job_id)
        if task is not None:
            self.cancelled.add(job_id)
            task.cancel()

    async def _answer(self, item: Prepared) -> None:
        job = item.delivery.job
        assert job is not None
        self.by_job[job.id] = asyncio.current_task()  # type: ignore[assignment]
        self.items[job.id] = item
        # This task's own context: bound without the cost of bound_contextvars' save and restore.
        structlog.contextvars.bind_contextvars(job_id=job.id, trace_id=job.trace_id)
        try:
            await self._attempts(item)
        except asyncio.CancelledError:
            if job.id not in self.cancelled:
                raise  # shutdown past the grace period: the job stays pending for another worker
            await self.queries.cancelled(item.delivery)
            self.log.info("answer_cancelled", job_id=job.id)
        except JobCancelled:
            await self.queries.cancelled(item.delivery)
            self.log.info("answer_cancelled", job_id=job.id)
        finally:
            self.by_job.pop(job.id, None)
            self.items.pop(job.id, None)
            self.cancelled.discard(job.id)

    async def _attempts(self, item: Prepared) -> None:
        for attempt in range(1, self.settings.max_deliveries + 1):
            try:
                await self.queries.answer(item)
                return
            except (asyncio.CancelledError, JobCancelled):
                raise
            except (RedisError, OSError) as exc:
                # Redis itself is away: nothing can be written, so leave the job pending; once
                # Redis is back it is claimed again (a `restart` event, then the whole answer).
                self.log.warning("answer_interrupted", error=str(exc))
                return
            except Exception as exc:  # noqa: BLE001
                error = exc if isinstance(exc, RagError) else RagError(f"internal error: {exc!r}")
                # Retried only before the first token: a client never sees an answer start twice.
                retry = not error.permanent and not item.streamed and attempt < self.settings.max_deliveries
                self.log.warning("answer_failed", code=error.code, error=error.message, attempt=attempt,
                                 retry=retry)
                if not retry:
                    await self.queries.fail(item.delivery, error)
                    return
                await asyncio.sleep(min(0.5 * 2**attempt, 8.0))

    async def _drain(self) -> None:
        busy = set(self.inflight) | ({self.indexing} if self.indexing and not self.indexing.done() else set())
        if not busy:
            return
        self.log.info("draining", inflight=len(busy))
        _, pending = await asyncio.wait(busy, timeout=self.settings.shutdown_grace_s)
        if pending:
            await cancel(*pending)
            self.log.warning("left_pending", jobs=len(pending))
