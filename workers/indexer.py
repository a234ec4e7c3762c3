"""Indexing ingest batches: embed a batch of chunks in one call, upsert them, report progress."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

from core.protocol import IngestBatch
from workers.store import DEFAULT_COLLECTION, PointIn

if TYPE_CHECKING:
    from core.events import EventWriter
    from workers.consumer import Consumer, Delivery
    from workers.embedder import Embedder
    from workers.metrics import Metrics
    from workers.store import VectorStore

log = structlog.get_logger("workers.indexer")


class Indexer:
    def __init__(
        self, *, embedder: Embedder, store: VectorStore, events: EventWriter, consumer: Consumer, metrics: Metrics
    ) -> None:
        self._embedder = embedder
        self._store = store
        self._events = events
        self._consumer = consumer
        self._metrics = metrics

    async def index(self, delivery: Delivery) -> None:
        job = delivery.job
        if job is None or not isinstance(job.payload, IngestBatch):
            await self._consumer.dead_letter(delivery, "malformed_job", delivery.malformed or "not an ingest batch")
            return
        batch = job.payload
        started = time.perf_counter()
        vectors = await self._embedder.embed([c.text for c in batch.chunks]) if batch.chunks else []
        embedded = time.perf_counter()
        doc = batch.document
        points = [
            PointIn(
                chunk.id,
                vector.tolist(),
                {
                    "collection": batch.collection or DEFAULT_COLLECTION,
                    "document_id": doc.id,
                    "file": doc.file,
                    "title": doc.title,
                    "page": chunk.page,
                    "page_end": chunk.page_end,
                    "index": chunk.index,
                    "text": chunk.text,
                },
            )
            for chunk, vector in zip(batch.chunks, vectors)
        ]
        if points:
            await self._store.upsert(points)
        # Progress before the ack: a crash in between re-indexes the batch (idempotent
        # upserts) and counts it twice, never loses it.
        await self._events.ingest_progress(job.id, len(points), doc.file)
        await self._consumer.ack(delivery)
        await self._metrics.incr(ingest_batches=1, ingest_embed_calls=1, chunks_indexed=len(points))
        log.info("ingest_batch", job_id=job.id, file=doc.file, chunks=len(points),
                 embed_ms=round((embedded - started) * 1000, 1),
                 upsert_ms=round((time.perf_counter() - embedded) * 1000, 1))
