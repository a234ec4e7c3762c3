"""Indexing the ingest stream: embed a batch of chunks in one call, upsert, publish complete documents, delete.

A new version of a document is indexed into a hidden staging area; the worker that
indexes its last missing batch publishes it (unstages it and deletes the version it
replaces, see VectorStore.publish) before that batch's progress is counted, so the
ingest job's ``done`` comes after every document of the job is visible.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog

from core.documents import DocumentRegistry, Indexed
from core.payload import DEFAULT_COLLECTION, NAV_KIND, ChunkPayload, indexed_text, payload_dict, staging
from core.protocol import DeleteDocument, DocumentEvent, Done, IngestBatch
from workers.sparse import Bm25Encoder
from workers.store import PointIn

if TYPE_CHECKING:
    from core.events import EventWriter
    from core.protocol import Job
    from workers.consumer import Consumer, Delivery
    from workers.embedder import Embedder
    from workers.metrics import Metrics
    from workers.store import VectorStore

log = structlog.get_logger("workers.indexer")


class Indexer:
    def __init__(
        self, *, embedder: Embedder, store: VectorStore, events: EventWriter, consumer: Consumer, metrics: Metrics,
        registry: DocumentRegistry | None = None, bm25: Bm25Encoder | None = None,
    ) -> None:
        self._embedder = embedder
        self._bm25 = bm25 or Bm25Encoder()
        self._store = store
        self._events = events
        self._consumer = consumer
        self._metrics = metrics
        self._registry = registry or DocumentRegistry(events.redis, events.keys)

    async def index(self, delivery: Delivery) -> None:
        """Handle one message of the ingest stream: a chunk batch or a document deletion."""
        job = delivery.job
        if job is not None and isinstance(job.payload, DeleteDocument):
            await self._delete(delivery, job, job.payload)
            return
        if job is None or not isinstance(job.payload, IngestBatch):
            await self._consumer.dead_letter(delivery, "malformed_job", delivery.malformed or "not an ingest batch")
            return
        batch = job.payload
        started = time.perf_counter()
        # Both arms index the chunk's contextual header (title, section path) with its text.
        texts = [indexed_text(c.context, c.text) for c in batch.chunks]
        vectors: Any = await self._embedder.embed(texts) if texts else []
        embedded = time.perf_counter()
        sparse = self._bm25.documents(texts)
        # The heading arm indexes each section's heading once, on the chunk the section starts with.
        headings = [self._bm25.heading(c.section) if c.part == 0 and not c.nav else None for c in batch.chunks]
        doc = batch.document
        collection = batch.collection or DEFAULT_COLLECTION
        points = [
            PointIn(
                chunk.id,
                vector.tolist(),
                payload_dict(ChunkPayload(
                    collection=staging(collection) if batch.staged else collection,
                    document_id=doc.id, file=doc.file, title=doc.title, page=chunk.page, page_end=chunk.page_end,
                    index=chunk.index, section=chunk.section, text=chunk.text, context=chunk.context,
                    kind=NAV_KIND if chunk.nav else "content", part=chunk.part,
                )),
                bm25,
                heading,
            )
            for chunk, vector, bm25, heading in zip(batch.chunks, vectors, sparse, headings)
        ]
        if points:
            await self._store.upsert(points)
        if batch.seq is not None:
            state = await self._registry.batch_indexed(collection, doc.id, batch.seq, batch.batches,
                                                       batch.chunks_total)
            if state is Indexed.COMPLETE or (state is Indexed.PUBLISHED and batch.staged):
                # A redelivery of a batch of a published document has just staged its points
                # again; publishing is idempotent and makes them visible once more.
                await self._publish(job, collection, doc.id, again=state is Indexed.PUBLISHED)
            elif state is Indexed.DELETED and batch.staged:
                # Deleted while its batches were still on the way: these would never be published.
                await self._store.delete_document(doc.id, collection)
        # Progress before the ack: a crash in between re-indexes the batch (idempotent
        # upserts) and counts it twice, never loses it.
        await self._events.ingest_progress(job.id, len(points), doc.file)
        await self._consumer.ack(delivery)
        self._metrics.incr(ingest_batches=1, ingest_embed_calls=1, chunks_indexed=len(points))
        log.info("ingest_batch", job_id=job.id, file=doc.file, chunks=len(points),
                 embed_ms=round((embedded - started) * 1000, 1),
                 upsert_ms=round((time.perf_counter() - embedded) * 1000, 1))

    async def _publish(self, job: Job, collection: str, document_id: str, *, again: bool = False) -> None:
        record = await self._registry.get(collection, document_id)
        if record is None:  # deleted while it was being indexed
            await self._store.delete_document(document_id, collection)
            return
        replaces = [r for r in record.replaces.split(",") if r and r != document_id]
        await self._store.publish(document_id, collection, chunks=record.chunks, staged=record.staged,
                                  replaces=replaces)
        await self._registry.published(record)
        if again:
            return
        await self._events.emit(job.id, DocumentEvent(
            status="ready", file=record.file, document_id=document_id, pages=record.pages, chunks=record.chunks,
        ), unless_cancelled=False)
        self._metrics.incr(documents_published=1)
        log.info("document_published", job_id=job.id, file=record.file, document_id=document_id,
                 chunks=record.chunks, replaced=replaces)

    async def _delete(self, delivery: Delivery, job: Job, request: DeleteDocument) -> None:
        collection = request.collection or DEFAULT_COLLECTION
        record = await self._registry.get(collection, request.document_id)
        deleted = await self._store.delete_document(request.document_id, collection)
        if request.forget:
            await self._registry.forget(collection, request.document_id)
        if request.report:
            await self._events.emit(job.id, DocumentEvent(
                status="deleted", file=record.file if record else "", document_id=request.document_id,
                chunks=deleted,
            ), unless_cancelled=False)
            await self._events.emit(job.id, Done(chunks=deleted), unless_cancelled=False)
        await self._consumer.ack(delivery)
        log.info("document_deleted", job_id=job.id, document_id=request.document_id, collection=collection,
                 points=deleted)
