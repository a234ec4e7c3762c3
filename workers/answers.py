"""Answering a batch of queries: one embed call, one batched search, then concurrent generations."""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import TYPE_CHECKING

import numpy as np
import structlog
from msgspec import Struct

from core.documents import DocumentRegistry
from core.errors import BadRequest, RagError
from core.payload import DEFAULT_COLLECTION, ChunkPayload, read_payload
from core.protocol import (
    EMPTY_COLLECTION,
    NOT_FOUND_ANSWER,
    Done,
    Embed,
    Error,
    Event,
    PageRequest,
    Query,
    Restart,
    Source,
    Sources,
    Timings,
    Token,
    now_ms,
)
from workers.citations import cite, says_not_found
from workers.followups import Followups
from workers.generator import Answer, stream_words
from workers.lookups import Lookups
from workers.passages import Context, PassageSelector
from workers.ranking import HeadingMatch
from workers.sparse import Bm25Encoder
from workers.store import Hit, Search, fusion_of
from workers.tokens import TokenCoalescer

if TYPE_CHECKING:
    from core.events import EventWriter
    from core.settings import Settings
    from workers.consumer import Consumer, Delivery
    from workers.embedder import Embedder, Reservation
    from workers.generator import Generator
    from workers.metrics import Metrics
    from workers.reranker import Reranker
    from workers.store import VectorStore

log = structlog.get_logger("workers.answers")


class Prepared(Struct):
    """A query after retrieval, ready for generation."""

    delivery: Delivery
    query: Query
    #: The question as searched and answered: standalone, when it follows a conversation (workers.followups).
    question: str
    sources: list[Source]
    timings: Timings
    #: Set once a token event was written: from then on a failure is not retried.
    streamed: bool = False
    #: Holds background (ingest) embedding back from the moment the job is read to its first token.
    reservation: Reservation | None = None
    #: The sentences the answer is built from (chosen after the sources event is written).
    context: Context = Context([], found=False)


def to_sources(hits: list[Hit]) -> list[Source]:
    return [_source(i, h, read_payload(h.payload)) for i, h in enumerate(hits, start=1)]


def _source(n: int, hit: Hit, chunk: ChunkPayload) -> Source:
    return Source(n=n, file=chunk.file, page=chunk.page, page_end=chunk.page_end, score=round(hit.score, 4),
                  snippet=chunk.text, document_id=chunk.document_id, chunk_id=hit.id, title=chunk.title or None,
                  section=chunk.section or None)


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
        bm25: Bm25Encoder | None = None,
        reranker: Reranker | None = None,
    ) -> None:
        self._settings = settings
        self._embedder = embedder
        self._store = store
        self._generator = generator
        self._events = events
        self._consumer = consumer
        self._metrics = metrics
        self._bm25 = bm25 or Bm25Encoder()
        self._reranker = reranker
        self._fusion = fusion_of(settings)
        self._heading_match = HeadingMatch(self._bm25)
        self._registry = DocumentRegistry(events.redis, events.keys)
        self._passages = PassageSelector(embedder, self._bm25, budget_tokens=settings.llm.context_tokens,
                                         min_score=settings.llm.min_score, cache_size=settings.llm.sentence_cache)
        self.followups = Followups(settings.conversation, self._bm25, generator, llm=settings.llm.backend == "openai")
        self._lookups = Lookups(store, embedder.dim)

    async def prepare(self, deliveries: list[Delivery], rewritten: dict[bytes, str] | None = None) -> list[Prepared]:
        """Embed every question (and every embedding job's texts) in one call, search once for all, and send
        each job its sources (or its result); ``rewritten`` holds the LLM's standalone forms of follow-ups."""
        started = time.perf_counter()
        picked_ms = now_ms()
        valid: list[tuple[Delivery, Query]] = []
        embeds: list[tuple[Delivery, Embed]] = []
        pages: list[tuple[Delivery, PageRequest]] = []
        for delivery in deliveries:
            payload = delivery.job.payload if delivery.job is not None else None
            if isinstance(payload, Embed):
                embeds.append((delivery, payload))
            elif isinstance(payload, PageRequest):
                pages.append((delivery, payload))
            elif not isinstance(payload, Query):
                await self._consumer.dead_letter(delivery, "malformed_job", delivery.malformed or "not a query")
            elif not payload.question.strip():
                await self.fail(delivery, BadRequest("the question is empty", code="empty_question"))
            else:
                valid.append((delivery, payload))
        lookups = await self._lookups.pages(pages) if pages else []
        done = [d for d, _ in embeds] + [d for d, _ in pages]
        if not valid:
            if embeds:
                rows = await self._embedder.embed([t for _, e in embeds for t in e.texts], urgent=True)
                lookups += self._lookups.embedded(embeds, rows)
            await self._finish_lookups(lookups, done)
            return []
        # Queries first: from here to each answer's first token no ingest piece starts (on 2
        # cores one beside the LLM's prefill slows the first token by a third).
        reservations = {d.entry_id: self._embedder.reserve() for d, _ in valid}
        questions = [(rewritten or {}).get(d.entry_id) or self.followups.rule(q) for d, q in valid]
        try:
            return await self._prepare(valid, questions, reservations, started, picked_ms, embeds=embeds,
                                       lookups=lookups, done=done)
        finally:
            for reservation in reservations.values():
                reservation.release()  # no-op for those handed to their answer

    async def _finish_lookups(self, events: list[tuple[str, Event]], deliveries: list[Delivery]) -> None:
        if events:
            await self._events.emit_each(events)
        for delivery in deliveries:
            await self._consumer.ack(delivery)
        if deliveries:
            self._metrics.incr(lookups=len(deliveries))

    async def _prepare(self, valid: list[tuple[Delivery, Query]], questions: list[str],
                       reservations: dict[bytes, Reservation], started: float, picked_ms: int, *,
                       embeds: list[tuple[Delivery, Embed]], lookups: list[tuple[str, Event]],
                       done: list[Delivery]) -> list[Prepared]:
        queries = [q for _, q in valid]
        extra = [t for _, e in embeds for t in e.texts]
        searches, embedded, vectors, extra_rows = await self._searches(queries, questions, extra)
        if embeds:
            lookups = lookups + self._lookups.embedded(embeds, extra_rows)
        embedded_at = time.perf_counter()
        rerank = [self._reranker is not None and (q.rerank if q.rerank is not None else True) for q in queries]
        candidates = self._settings.reranker.candidates if any(rerank) else 0
        limit = max(max(q.top_k for q in queries), candidates)
        # Fused (the heading arm among the arms), every candidate before the top is cut: a question that names
        # a section gets the chunk it starts with first.
        results = await self._store.search_batch(searches, limit=limit, fusion=self._fusion,
                                                 rerank=self._rank_headings)
        self._metrics.exported.searched(len(searches), time.perf_counter() - embedded_at)
        results = await self._reranked(questions, results, rerank)
        searched = time.perf_counter()
        indexing = await self._registry.indexing_files({q.collection or DEFAULT_COLLECTION for q in queries})
        self._metrics.incr(query_batches=1, query_embed_calls=int(embedded > 0), queries_embedded=embedded, searches=1)
        log.info("query_batch", size=len(valid), embed_ms=round((embedded_at - started) * 1000, 1),
                 search_ms=round((searched - embedded_at) * 1000, 2))
        # Every job's sources (after a `restart` for a job claimed again) in one round trip.
        sources = [to_sources(hits[: q.top_k]) for q, hits in zip(queries, results)]
        # A search that found nothing in a collection with no documents at all: say that, not "not found".
        unfound = {q.collection or DEFAULT_COLLECTION for q, found in zip(queries, sources) if not found}
        empty = unfound - await self._registry.collections_with_documents() if unfound else set()
        events: list[tuple[str, Event]] = list(lookups)
        for (delivery, query), found in zip(valid, sources):
            assert delivery.job is not None
            if delivery.deliveries > 1 and not delivery.announced:
                events.append((delivery.job.id, Restart(delivery=delivery.deliveries)))
            collection = query.collection or DEFAULT_COLLECTION
            events.append((delivery.job.id, Sources(sources=found, indexing=indexing.get(collection, []))))
            if collection in empty:  # no sources, and no documents to find any in: it ends here
                events.append((delivery.job.id, Error(code=EMPTY_COLLECTION, message=(
                    f"the collection {collection!r} has no documents: ingest some first (python -m ingest, "
                    "or POST /v1/documents)"))))
        written = dict(zip((job_id for job_id, _ in events), await self._events.emit_each(events)))
        self._metrics.exported.sources_written([d for d, _ in valid
                                                if d.job is not None and written[d.job.id] is not None])
        await self._finish_lookups([], done)
        kept = [i for i, (d, q) in enumerate(valid) if (q.collection or DEFAULT_COLLECTION) not in empty]
        contexts = dict(zip(kept, await self._passages.select(
            [questions[i] for i in kept], [vectors.get(i) for i in kept], [sources[i] for i in kept])))
        prepared: list[Prepared] = []
        for i, ((delivery, query), found) in enumerate(zip(valid, sources)):
            assert delivery.job is not None
            if written[delivery.job.id] is None:  # cancelled: `cancelled` is written, nothing more
                await self._consumer.ack(delivery)
                self._metrics.incr(cancelled=1)
                continue
            if i not in contexts:  # an empty collection: told so in its error event
                await self._consumer.ack(delivery)
                continue
            timings = Timings(
                queued_ms=float(max(0, picked_ms - delivery.job.created_ms)),
                embed_ms=round((embedded_at - started) * 1000, 2),
                search_ms=round((searched - embedded_at) * 1000, 2),
                batch_size=len(valid),
            )
            prepared.append(Prepared(delivery, query, questions[i], found, timings,
                                     reservation=reservations.pop(delivery.entry_id), context=contexts[i]))
        return prepared

    def _rank_headings(self, search: Search, hits: list[Hit]) -> list[Hit]:
        return self._heading_match.rerank(search.heading, hits, self._fusion) if search.heading else hits

    async def _searches(self, queries: list[Query], questions: list[str], extra: list[str]
                        ) -> tuple[list[Search], int, dict[int, np.ndarray], np.ndarray]:
        """Each question's search by the arms its retrieval mode names, how many were embedded, the
        question vectors by position, and the vectors of the ``extra`` texts (embedding jobs').

        The dense arm embeds every question of the batch in one call, with the extra texts; a question
        with no searchable word (stopwords or symbols only) has no BM25 arm and goes by the dense one.
        """
        r = self._settings.retrieval
        modes = [q.retrieval or r.mode for q in queries]
        words = [self._bm25.query(q) for q in questions]
        # A BM25 arm alone cannot search a question it has no word of: the dense arm does then.
        dense_rows = [i for i, m in enumerate(modes) if m in ("hybrid", "dense") or words[i] is None]
        vectors: dict[int, np.ndarray] = {}
        extra_rows = np.empty((0, self._embedder.dim), dtype=np.float32)
        if dense_rows or extra:
            rows = await self._embedder.embed([questions[i] for i in dense_rows] + extra, urgent=True)
            vectors = dict(zip(dense_rows, rows))
            extra_rows = rows[len(dense_rows):]
        heading_on = r.heading_weight > 0
        searches = [Search(collection=q.collection or DEFAULT_COLLECTION,
                           dense=vectors[i].tolist() if i in vectors else None,
                           sparse=words[i] if m in ("hybrid", "sparse") else None,
                           heading=words[i] if m == "heading" or (m == "hybrid" and heading_on) else None)
                    for i, (q, m) in enumerate(zip(queries, modes))]
        return searches, len(dense_rows), vectors, extra_rows

    async def _reranked(self, questions: list[str], results: list[list[Hit]], rerank: list[bool]) -> list[list[Hit]]:
        """The fused candidates of the questions to rerank, reordered by the reranker (one call per
        micro-batch); on a reranker failure, the fused order stands."""
        picked = [i for i, on in enumerate(rerank) if on and results[i]]
        if self._reranker is None or not picked:
            return results
        n = self._settings.reranker.candidates
        scores = await self._reranker.rerank_batch(
            [questions[i] for i in picked],
            [[read_payload(h.payload).indexed_text() for h in results[i][:n]] for i in picked])
        out = list(results)
        for i, row in zip(picked, scores):
            if isinstance(row, RagError):  # that question keeps the fused order
                log.warning("rerank_failed", code=row.code, error=row.message)
                self._metrics.incr(rerank_failures=1)
                continue
            head = sorted(zip(row, range(len(row)), results[i][:n]), key=lambda t: (-t[0], t[1]))
            out[i] = [Hit(h.id, round(score, 4) if score > float("-inf") else h.score, h.payload)
                      for score, _, h in head] + results[i][n:]
        return out

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
            found = item.context.found
            # Nothing retrieved answers it: the LLM is not asked to improvise.
            stream = (self._generator.stream(item.question, item.context, result, item.query.instructions) if found
                      else stream_words(NOT_FOUND_ANSWER))
            async with aclosing(stream) as stream:
                async for delta in stream:
                    if not first_token:
                        first_token = time.perf_counter()
                        reservation.release()
                        self._metrics.exported.first_token(item.delivery)
                    await tokens.add(delta)
        finally:
            reservation.release()
            item.reservation = None
        await tokens.flush()
        finished = time.perf_counter()
        self._metrics.exported.generated(finished - started)
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
        found = found and not says_not_found(answer)
        citations, supported = cite(answer, item.context, item.sources) if found else ([], True)
        await events.emit(Done(answer=answer, citations=citations, usage=result.usage, timings=timings,
                               found=found, supported=supported))
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
