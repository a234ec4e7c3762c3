"""When something went wrong: jobs claimed from a silent consumer, jobs resumed under a name taken back,
answers retried, and the decision to dead-letter.

A taken-over job is answered (or indexed) again from the start: its client first gets a
``restart`` event. One delivered more than ``max_deliveries`` times, or an answer that
fails for good, goes to the dead-letter stream and its client gets an ``error`` event.
The consumer loop (workers.loop) takes up what this module hands back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import structlog
from redis.exceptions import RedisError

from core.errors import RagError
from core.events import JobCancelled
from core.protocol import Restart

if TYPE_CHECKING:
    from core.events import EventWriter
    from core.keys import Keys
    from core.settings import WorkerSettings
    from workers.answers import Prepared, QueryPipeline
    from workers.consumer import Consumer, Delivery
    from workers.metrics import WorkerMetrics

log = structlog.get_logger("workers")

#: Jobs to take up: their stream, and the deliveries to answer (queries) or index (ingest) again.
TakeUp = tuple[str, list["Delivery"]]


class Recovery:
    """One consumer's recovery. ``in_progress`` names the entries that any consumer of this process is
    handling now: never claimed from under it."""

    def __init__(self, consumer: Consumer, keys: Keys, settings: WorkerSettings, *, queries: QueryPipeline,
                 events: EventWriter, in_progress: Callable[[], set[bytes]], metrics: WorkerMetrics) -> None:
        self._consumer = consumer
        self._metrics = metrics
        self._keys = keys
        self._settings = settings
        self._queries = queries
        self._events = events
        self._in_progress = in_progress
        self._last_claim = 0.0
        self._log = log.bind(consumer=consumer.name)

    async def orphans(self) -> AsyncIterator[TakeUp]:
        """At start: the jobs still pending under this consumer's name are orphans (the name's lease was
        free, or its holder gone), so they are resumed at once rather than claimed after claim_idle_ms.
        Every client hears of the restart first; then they come a batch at a time."""
        batch_size = self._settings.batch_size
        for stream in (self._keys.queries, self._keys.ingest):
            own: list[Delivery] = []
            while page := await self._consumer.pending_own(stream, count=batch_size,
                                                           after=own[-1].entry_id if own else None):
                own += page
            own = await self._unfinished(own)
            if not own:
                continue
            self._log.warning("resumed_own", stream=stream, count=len(own))
            self._metrics.took_over(stream, "resume", len(own))
            await self._announce(own)
            for start in range(0, len(own), batch_size):
                yield stream, await self._sift(own[start : start + batch_size])

    async def stale(self) -> list[TakeUp]:
        """Jobs whose consumer went silent, taken over (every claim_idle_ms / 4 at most); those out of
        deliveries are dead-lettered."""
        now = time.monotonic()
        if now - self._last_claim < max(self._settings.claim_idle_ms / 4000, 0.5):
            return []
        self._last_claim = now
        taken: list[TakeUp] = []
        for stream in (self._keys.queries, self._keys.ingest):
            claimed = await self._consumer.claim_stale(
                stream, min_idle_ms=self._settings.claim_idle_ms, count=self._settings.batch_size
            )
            # After a Redis outage longer than claim_idle_ms, live jobs look idle too (their
            # heartbeat touches failed): never take over one that is still being worked on.
            claimed = await self._not_in_progress(claimed) if claimed else []
            if not claimed:
                continue
            self._log.warning("claimed_stale", stream=stream, count=len(claimed))
            self._metrics.took_over(stream, "claim", len(claimed))
            live = await self._sift(await self._unfinished(claimed))
            await self._announce(live)
            taken.append((stream, live))
        return taken

    async def _unfinished(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Those of ``deliveries`` whose job has not ended; the others are acknowledged. A worker killed between
        a job's terminal event and its acknowledgement leaves it pending: taken up again, it would be answered
        twice."""
        queries = {d.job.id: d for d in deliveries if d.job is not None and d.stream == self._keys.queries}
        finished = await self._events.finished(list(queries))
        for job_id in finished:
            await self._consumer.ack(queries[job_id])
        if finished:
            self._log.info("acknowledged_finished", count=len(finished))
        return [d for d in deliveries if d.job is None or d.job.id not in finished]

    async def _sift(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Those still worth a try; those delivered too often are dead-lettered."""
        live: list[Delivery] = []
        for delivery in deliveries:
            if delivery.deliveries > self._settings.max_deliveries:
                await self._queries.fail(
                    delivery,
                    RagError(f"gave up after {delivery.deliveries - 1} deliveries", code="max_deliveries"),
                )
            else:
                live.append(delivery)
        return live

    async def _announce(self, deliveries: list[Delivery]) -> None:
        """The `restart` event of every taken-over query not yet told, in one round trip."""
        fresh = [d for d in deliveries if d.job is not None and d.stream == self._keys.queries
                 and d.deliveries > 1 and not d.announced]
        await self._events.emit_each([(d.job.id, Restart(delivery=d.deliveries)) for d in fresh if d.job])
        for delivery in fresh:
            delivery.announced = True

    async def _not_in_progress(self, claimed: list[Delivery]) -> list[Delivery]:
        """Those of ``claimed`` that no consumer of this process is handling, and whose job
        stream shows no event within claim_idle_ms (another worker would be writing them)."""
        ours = self._in_progress()
        rest = [d for d in claimed if d.entry_id not in ours]
        queries = [d for d in rest if d.job is not None and d.stream == self._keys.queries]
        if not queries:
            return rest
        seconds, micros = await self._events.redis.time()
        now = int(seconds) * 1000 + int(micros) // 1000
        recent = set()
        for delivery in queries:
            assert delivery.job is not None
            last = await self._events.last_event_ms(delivery.job.id)
            if last is not None and now - last < self._settings.claim_idle_ms:
                recent.add(delivery.entry_id)
        if recent:
            self._log.warning("claim_skipped_alive", count=len(recent))
        return [d for d in rest if d.entry_id not in recent]

    async def answer(self, item: Prepared) -> None:
        """Answer, retrying what failed for a transient reason before the first token was streamed; a
        permanent failure, or the last, is told to the client and dead-lettered."""
        for attempt in range(1, self._settings.max_deliveries + 1):
            try:
                await self._queries.answer(item)
                return
            except (asyncio.CancelledError, JobCancelled):
                raise
            except (RedisError, OSError) as exc:
                # Redis itself is away: nothing can be written, so leave the job pending; once
                # Redis is back it is claimed again (a `restart` event, then the whole answer).
                self._log.warning("answer_interrupted", error=str(exc))
                return
            except Exception as exc:  # noqa: BLE001
                error = exc if isinstance(exc, RagError) else RagError(f"internal error: {exc!r}")
                # Retried only before the first token: a client never sees an answer start twice.
                retry = not error.permanent and not item.streamed and attempt < self._settings.max_deliveries
                self._log.warning("answer_failed", code=error.code, error=error.message, attempt=attempt,
                                  retry=retry)
                if not retry:
                    await self._queries.fail(item.delivery, error)
                    return
                await asyncio.sleep(min(0.5 * 2**attempt, 8.0))
