"""One consumer's loop: read a batch, embed and search it, start its answers; index ingest batches meanwhile.

Each answer in flight is one :class:`InFlight` record (its prepared query, its task, whether its
client cancelled it); ingest batches are indexed one message batch at a time in the background,
so the loop goes on reading queries. What went wrong before (stale jobs, orphans) comes back
through :class:`workers.recovery.Recovery`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import structlog
from redis.exceptions import RedisError

from core.errors import RagError
from core.events import JobCancelled
from core.loop import cancel
from core.protocol import Query
from workers.batcher import Batcher

if TYPE_CHECKING:
    from core.keys import Keys
    from core.settings import WorkerSettings
    from workers.answers import Prepared, QueryPipeline
    from workers.consumer import Consumer, Delivery
    from workers.indexer import Indexer
    from workers.metrics import WorkerMetrics
    from workers.recovery import Recovery, TakeUp

log = structlog.get_logger("workers")

#: While an ingest batch is indexed in the background, how often the loop looks for queries.
INDEXING_POLL_S = 0.01


class InFlight:
    """An answer being generated."""

    __slots__ = ("cancelled", "item", "started", "task")

    def __init__(self, item: Prepared) -> None:
        self.item = item
        self.task: asyncio.Task[None] | None = None
        #: Its task has begun (a task cancelled before it begins would never write `cancelled`).
        self.started = False
        #: Its client cancelled it (rather than the shutdown's grace period running out).
        self.cancelled = False


class Indexing:
    """Ingest messages being indexed in the background, one after the other."""

    __slots__ = ("deliveries", "task")

    def __init__(self, deliveries: list[Delivery], task: asyncio.Task[None]) -> None:
        self.deliveries = deliveries
        self.task = task


class ConsumerLoop:
    def __init__(self, consumer: Consumer, keys: Keys, settings: WorkerSettings, *, queries: QueryPipeline,
                 indexer: Indexer, recovery: Recovery, stopping: asyncio.Event, metrics: WorkerMetrics,
                 burst: bool = False) -> None:
        self.consumer = consumer
        self._metrics = metrics
        self._keys = keys
        self._settings = settings
        self._queries = queries
        self._indexer = indexer
        self._recovery = recovery
        self._stopping = stopping
        self._burst = burst
        self._batcher = Batcher(consumer, keys, wait_ms=settings.batch_wait_ms, block_ms=settings.block_ms)
        #: Answers in flight, by job id.
        self._answering: dict[str, InFlight] = {}
        #: Follow-up questions the LLM is making standalone, by entry id, and the tasks doing it.
        self._rewriting: dict[bytes, Delivery] = {}
        self._rewrites: set[asyncio.Task[None]] = set()
        #: Read and being worked on, in no record above: a batch in retrieval, taken-over ingest indexed inline.
        self._in_hand: dict[bytes, Delivery] = {}
        self._indexing: Indexing | None = None
        self._log = log.bind(consumer=consumer.name)

    async def run(self) -> None:
        try:
            async for taken in self._recovery.orphans():
                await self._take_up(taken)
            await self._loop()
        finally:
            await self._drain()

    async def _loop(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                for taken in await self._recovery.stale():
                    await self._take_up(taken)
                if not await self._step():
                    self._log.info("burst_idle_exit")
                    return
                backoff = 0.1
            except (RagError, RedisError, OSError) as exc:
                # Transient (Redis, embedder, store): the jobs stay pending and are claimed again.
                self._log.warning("loop_error", error=str(exc), backoff_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception as exc:  # noqa: BLE001 - logged with its traceback; the loop goes on
                self._log.exception("loop_crash", error=repr(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _step(self) -> bool:
        """Take the next batch, or wait for room; False when a burst worker has nothing left to do."""
        free = self._settings.max_generations - len(self._answering) - len(self._rewriting)
        if free <= 0:
            await asyncio.wait(self._busy(), return_when=asyncio.FIRST_COMPLETED)
            return True
        size = min(self._settings.batch_size, free)
        indexing = self._indexing.task if self._indexing is not None and not self._indexing.task.done() else None
        batch = await self._batcher.next(size, block=not self._burst, ingest=indexing is None,
                                         hold=bool(self._answering))
        self._metrics.taken(batch.deliveries)
        if batch.kind == "query":
            await self._start_answers(batch.deliveries)
        elif batch.kind == "ingest":
            # Indexed in the background: the loop goes on reading queries meanwhile.
            self._indexing = Indexing(batch.deliveries, asyncio.create_task(self._index(batch.deliveries)))
        elif indexing is not None:
            # Look for queries every few ms, and take the next ingest batch once this one is in.
            await asyncio.wait({indexing}, timeout=INDEXING_POLL_S)
        elif self._burst:
            busy = self._busy()
            if busy:
                await asyncio.wait(busy, return_when=asyncio.FIRST_COMPLETED)
            elif not self._batcher.holding:
                return False
        return True

    async def _take_up(self, taken: TakeUp) -> None:
        """Jobs taken over from a consumer that is gone: answered, or indexed, again."""
        stream, deliveries = taken
        if stream == self._keys.queries:
            await self._start_answers(deliveries)
            return
        with self._holding(deliveries):
            for delivery in deliveries:
                await self._indexer.index(delivery)

    async def _index(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            try:
                await self._indexer.index(delivery)
            except Exception as exc:  # noqa: BLE001 - left pending: claimed again after claim_idle_ms
                self._log.warning("index_failed", error=repr(exc), delivery=delivery.deliveries)

    async def _start_answers(self, deliveries: list[Delivery], rewritten: dict[bytes, str] | None = None) -> None:
        """Search and start answering; follow-ups the LLM makes standalone first wait for it in a task of their
        own, so that they hold no other question back."""
        followups = self._queries.followups
        later = [d for d in deliveries if rewritten is None and d.job is not None and isinstance(d.job.payload, Query)
                 and followups.rewrites(d.job.payload)]
        if later:
            self._rewriting.update((d.entry_id, d) for d in later)  # claims must see them
            task = asyncio.create_task(self._rewrite(later))
            self._rewrites.add(task)
            task.add_done_callback(self._rewrites.discard)
            deliveries = [d for d in deliveries if d.entry_id not in self._rewriting]
        if not deliveries:
            return
        with self._holding(deliveries):  # retrieval can take long (a remote embedder, a reranker)
            prepared = await self._queries.prepare(deliveries, rewritten)
        for item in prepared:
            assert item.delivery.job is not None
            record = self._answering[item.delivery.job.id] = InFlight(item)  # before it runs: claims must see it
            record.task = asyncio.create_task(self._answer(record))

    async def _rewrite(self, deliveries: list[Delivery]) -> None:
        followups = self._queries.followups
        try:
            forms = await asyncio.gather(*(followups.rewrite(d.job.payload) for d in deliveries
                                           if d.job is not None and isinstance(d.job.payload, Query)))
            await self._start_answers(deliveries, dict(zip((d.entry_id for d in deliveries), forms)))
        except Exception as exc:  # noqa: BLE001 - left pending: claimed again after claim_idle_ms
            self._log.warning("followups_failed", error=repr(exc))
        finally:
            for delivery in deliveries:
                self._rewriting.pop(delivery.entry_id, None)

    def _answer_tasks(self) -> set[asyncio.Task[None]]:
        return {record.task for record in self._answering.values() if record.task is not None}

    def _busy(self) -> set[asyncio.Task[None]]:
        """Answers, and follow-ups being made standalone before theirs start."""
        return self._answer_tasks() | self._rewrites

    async def _answer(self, record: InFlight) -> None:
        delivery = record.item.delivery
        job = delivery.job
        assert job is not None
        record.started = True
        # This task's own context: bound without the cost of bound_contextvars' save and restore.
        structlog.contextvars.bind_contextvars(job_id=job.id, trace_id=job.trace_id)
        try:
            await self._recovery.answer(record.item)
        except asyncio.CancelledError:
            if not record.cancelled:
                raise  # shutdown past the grace period: the job stays pending for another worker
            await self._queries.cancelled(delivery)
            self._log.info("answer_cancelled", job_id=job.id)
        except JobCancelled:
            await self._queries.cancelled(delivery)
            self._log.info("answer_cancelled", job_id=job.id)
        finally:
            self._answering.pop(job.id, None)

    def handling(self) -> list[Delivery]:
        """The messages this consumer is handling now: answers, follow-ups being made standalone, ingest
        batches, and those read but not started."""
        handled = [record.item.delivery for record in self._answering.values()]
        handled += self._rewriting.values()
        handled += self._in_hand.values()
        if self._indexing is not None and not self._indexing.task.done():
            handled += self._indexing.deliveries
        return handled + self._batcher.held

    def in_progress(self) -> set[bytes]:
        """Entry ids of the messages this consumer is handling now."""
        return {delivery.entry_id for delivery in self.handling()}

    @contextlib.contextmanager
    def _holding(self, deliveries: list[Delivery]) -> Iterator[None]:
        self._in_hand.update((d.entry_id, d) for d in deliveries)
        try:
            yield
        finally:
            for delivery in deliveries:
                self._in_hand.pop(delivery.entry_id, None)

    async def touch_inflight(self) -> None:
        """Keep every message this consumer handles from looking idle (and being claimed by another consumer):
        answers, and ingest batches too."""
        by_stream: dict[str, list[bytes]] = {}
        for delivery in self.handling():
            by_stream.setdefault(delivery.stream, []).append(delivery.entry_id)
        for stream, ids in by_stream.items():
            await self.consumer.touch(stream, ids)

    def cancel_job(self, job_id: str) -> None:
        """Stop a generation now (its client cancelled): the LLM stream is closed, not drained."""
        record = self._answering.get(job_id)
        if record is not None and record.started and record.task is not None:
            record.cancelled = True
            record.task.cancel()

    async def _drain(self) -> None:
        deadline = asyncio.get_running_loop().time() + self._settings.shutdown_grace_s
        pending: set[asyncio.Task[None]] = set()
        # Again until nothing is left: a follow-up made standalone meanwhile starts its answer then.
        while busy := self._busy() | ({self._indexing.task} if self._indexing and not self._indexing.task.done()
                                      else set()):
            self._log.info("draining", inflight=len(busy))
            _, pending = await asyncio.wait(busy, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
            if pending:
                break
        if pending:
            await cancel(*pending)
            self._log.warning("left_pending", jobs=len(pending))
