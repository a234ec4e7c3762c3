"""Answering a batch of queries: one embed call, one batched search, then concurrent generations."""

from __future__ import annotations

import re
import time
from contextlib import aclosing
from typing import TYPE_CHECKING

import structlog
from msgspec import Struct

from core.errors import BadRequest, RagError
from core.protocol import Done, Error, Event, Query, Restart, Source, Sources, Timings, Token, now_ms
from workers.generator import Answer
from workers.store import DEFAULT_COLLECTION, Hit
from workers.tokens import TokenCoalescer

if TYPE_CHECKING:
    from core.events import EventWriter
    from core.settings import Settings
    from workers.consumer import Consumer, Delivery
    from workers.embedder import Embedder, Reservation
    from workers.generator import Generator
    from workers.metrics import Metrics
    from workers.store import VectorStore

log = structlog.get_logger("workers.answers")

_CITATION = re.compile(r"\[(\d+)\]")


class Prepared(Struct):
    """A query after retrieval, ready for generation."""

    delivery: Delivery
    query: Query
    sources: list[Source]
    timings: Timings
    #: Set once a token event was written: from then on a failure is not retried.
    streamed: bool = False
    #: Holds background (ingest) embedding back from the moment the job is read to its first token.
    reservation: Reservation | None = None


def to_sources(hits: list[Hit]) -> list[Source]:
    return [
        Source(
            n=i,
            file=str(h.payload.get("file", "")),
            page=int(h.payload.get("page", 0)),
            page_end=int(h.payload.get("page_end", h.payload.get("page", 0))),
            score=round(h.score, 4),
            snippet=str(h.payload.get("text", "")),
            document_id=str(h.payload.get("document_id", "")),
            chunk_id=h.id,
            title=h.payload.get("title") or None,
            section=h.payload.get("section") or None,
        )
        for i, h in enumerate(hits, start=1)
    ]


def cited(answer: str, sources: list[Source]) -> list[Source]:
    """The sources the answer cites as [n]; all of them when it cites none."""
    numbers = {int(n) for n in _CITATION.findall(answer)}
    picked = [s for s in sources if s.n in numbers]
    return picked or sources


class QueryPipeline:
    def __init__(
        self,
        *,
        settings: Settings,
        embedder: Embedder,
        store: VectorStore,
        generator: Generator,
        events: EventWriter,
        consumer: Consumer,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._embedder = embedder
        self._store = store
        self._generator = generator
        self._events = events
        self._consumer = consumer
        self._metrics = metrics

    async def prepare(self, deliveries: list[Delivery]) -> list[Prepared]:
        """Embed every question in one call, search once for all, and send each job its sources."""
        started = time.perf_counter()
        picked_ms = now_ms()
        valid: list[tuple[Delivery, Query]] = []
        for delivery in deliveries:
            job = delivery.job
            if job is None or not isinstance(job.payload, Query):
                await self._consumer.dead_letter(delivery, "malformed_job", delivery.malformed or "not a query")
                continue
            question = job.payload.question.strip()
            if not question:
                await self.fail(delivery, BadRequest("the question is empty", code="empty_question"))
                continue
            valid.append((delivery, job.payload))
        if not valid:
            return []
        # Queries first: from here to each answer's first token no ingest piece starts (on 2
        # cores one beside the LLM's prefill slows the first token by a third).
        reservations = {d.entry_id: self._embedder.reserve() for d, _ in valid}
        try:
            return await self._prepare(valid, reservations, started, picked_ms)
        finally:
            for reservation in reservations.values():
                reservation.release()  # no-op for those handed to their answer

    async def _prepare(self, valid: list[tuple[Delivery, Query]], reservations: dict[bytes, Reservation],
                       started: float, picked_ms: int) -> list[Prepared]:
        questions = [q.question for _, q in valid]
        vectors = await self._embedder.embed(questions, urgent=True)
        embedded = time.perf_counter()
        limit = max(q.top_k for _, q in valid)
        results = await self._store.search_batch(
            vectors, limit=limit, collection=[q.collection or DEFAULT_COLLECTION for _, q in valid]
        )
        searched = time.perf_counter()
        self._metrics.incr(query_batches=1, query_embed_calls=1, queries_embedded=len(valid), searches=1)
        log.info("query_batch", size=len(valid), embed_ms=round((embedded - started) * 1000, 1),
                 search_ms=round((searched - embedded) * 1000, 2))
        # Every job's sources (after a `restart` for a job claimed again) in one round trip.
        sources = [to_sources(hits[: q.top_k]) for (_, q), hits in zip(valid, results)]
        events: list[tuple[str, Event]] = []
        for (delivery, _), found in zip(valid, sources):
            assert delivery.job is not None
            if delivery.deliveries > 1:
                events.append((delivery.job.id, Restart(delivery=delivery.deliveries)))
            events.append((delivery.job.id, Sources(sources=found)))
        written = dict(zip((job_id for job_id, _ in events), await self._events.emit_each(events)))
        prepared: list[Prepared] = []
        for (delivery, query), found in zip(valid, sources):
            assert delivery.job is not None
            if written[delivery.job.id] is None:  # cancelled: `cancelled` is written, nothing more
                await self._consumer.ack(delivery)
                self._metrics.incr(cancelled=1)
                continue
            timings = Timings(
                queued_ms=float(max(0, picked_ms - delivery.job.created_ms)),
                embed_ms=round((embedded - started) * 1000, 2),
                search_ms=round((searched - embedded) * 1000, 2),
                batch_size=len(valid),
            )
            prepared.append(Prepared(delivery, query, found, timings,
                                     reservation=reservations.pop(delivery.entry_id)))
        return prepared

    async def answer(self, item: Prepared) -> None:
        """Stream the answer's tokens, then ``done``; acknowledge only after ``done`` is written."""
        job = item.delivery.job
        assert job is not None
        started = time.perf_counter()
        first_token = 0.0
        result = Answer()

        events = self._events.job(job.id)

        async def emit(text: str) -> None:
            item.streamed = True
            await events.emit(Token(text=text))

        tokens = TokenCoalescer(emit, self._settings.worker.token_flush_ms)
        # Background (ingest) embedding waits until this answer's first token (again, on a retry).
        reservation = item.reservation = item.reservation or self._embedder.reserve()
        try:
            # aclosing: on cancellation or error the LLM stream is closed at once, not drained.
            async with aclosing(self._generator.stream(item.query.question, item.sources, result)) as stream:
                async for delta in stream:
                    if not first_token:
                        first_token = time.perf_counter()
                        reservation.release()
                    await tokens.add(delta)
        finally:
            reservation.release()
            item.reservation = None
        await tokens.flush()
        finished = time.perf_counter()
        answer = tokens.answer
        timings = Timings(
            queued_ms=item.timings.queued_ms,
            embed_ms=item.timings.embed_ms,
            search_ms=item.timings.search_ms,
            first_token_ms=round(((first_token or finished) - started) * 1000, 1),
            generate_ms=round((finished - started) * 1000, 1),
            total_ms=float(now_ms() - job.created_ms),
            batch_size=item.timings.batch_size,
        )
        await events.emit(Done(answer=answer, citations=cited(answer, item.sources), usage=result.usage,
                               timings=timings))
        await events.settle()
        self._metrics.incr(answers=1, token_events=tokens.flushes)
        await self._consumer.ack(item.delivery)

    async def cancelled(self, delivery: Delivery) -> None:
        """The client cancelled: write `cancelled` (once) and drop the job."""
        assert delivery.job is not None
        await self._events.mark_cancelled(delivery.job.id)
        await self._consumer.ack(delivery)
        self._metrics.incr(cancelled=1)

    async def fail(self, delivery: Delivery, error: RagError) -> None:
        """Tell the client and dead-letter the job: for permanent errors and exhausted retries."""
        if delivery.job is not None:
            await self._events.emit(delivery.job.id, Error(code=error.code, message=error.message))
        await self._consumer.dead_letter(delivery, error.code, error.message)
        self._metrics.incr(failed=1)
