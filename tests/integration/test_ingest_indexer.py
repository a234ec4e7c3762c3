"""The indexer's document bookkeeping, driven message by message: out of order, redelivered, deleted meanwhile."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from core.documents import DocumentRecord, DocumentRegistry
from core.events import EventWriter
from core.keys import Keys
from core.protocol import ChunkIn, Document, IngestBatch, chunk_id, new_job
from core.redis import connect
from core.settings import LimitSettings, RedisSettings
from workers.consumer import Consumer, Delivery
from workers.indexer import Indexer
from workers.metrics import Metrics
from workers.store.edge import EdgeStore

DIM = 8


class FakeEmbedder:
    dim = DIM

    async def embed(self, texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), DIM), dtype=np.float32) / np.sqrt(DIM)

    async def aclose(self) -> None:
        return None


class Rig:
    def __init__(self, indexer: Indexer, registry: DocumentRegistry, store: EdgeStore, keys: Keys) -> None:
        self.indexer, self.registry, self.store, self.keys = indexer, registry, store, keys

    async def send(self, doc: str, seq: int, chunks: range, *, last: bool = False, staged: bool = True) -> None:
        document = Document(id=doc, file=f"{doc}.pdf", source=f"/x/{doc}.pdf", title=doc, pages=1)
        batch = IngestBatch(
            document=document, collection="default", seq=seq, staged=staged,
            chunks=[ChunkIn(id=chunk_id(f"default/{doc}", i), text=f"{doc} {i}", page=1, page_end=1, index=i)
                    for i in chunks],
            batches=seq + 1 if last else None, chunks_total=chunks.stop if last else None,
        )
        await self.indexer.index(Delivery(self.keys.ingest, b"1-1", new_job(batch, job_id="job1")))


@pytest.fixture
async def rig(redis_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[Rig]:
    redis = connect(RedisSettings(url=redis_url, prefix=prefix))
    keys = Keys(prefix)
    store = EdgeStore(tmp_path / "shard", DIM)
    events = EventWriter(redis, keys, LimitSettings())
    registry = DocumentRegistry(redis, keys)
    indexer = Indexer(embedder=FakeEmbedder(), store=store, events=events, consumer=Consumer(redis, keys, "c1"),
                      metrics=Metrics(redis, keys.metrics))
    try:
        yield Rig(indexer, registry, store, keys)
    finally:
        await store.aclose()
        await redis.aclose()


async def test_last_batch_first_then_the_rest_publishes_once(rig: Rig) -> None:
    await rig.registry.start(DocumentRecord(id="d1", collection="default", file="d1.pdf", source="/x/d1.pdf"))
    await rig.send("d1", 1, range(2, 4), last=True)  # the last batch overtakes the first
    assert (await rig.registry.get("default", "d1")).status == "indexing"  # type: ignore[union-attr]
    assert await rig.store.count_document("d1", "default") == 0  # staged: invisible
    await rig.send("d1", 0, range(2))
    record = await rig.registry.get("default", "d1")
    assert record is not None and (record.status, record.chunks) == ("ready", 4)
    assert await rig.store.count_document("d1", "default") == 4
    await rig.send("d1", 0, range(2))  # a redelivery after the publish: its points stay visible
    assert await rig.store.count_document("d1", "default") == 4
    assert await rig.store.count_document("d1", "default", staged=True) == 0
    assert (await rig.registry.get("default", "d1")).status == "ready"  # type: ignore[union-attr]


async def test_batches_of_a_deleted_document_are_dropped(rig: Rig) -> None:
    await rig.registry.start(DocumentRecord(id="d2", collection="default", file="d2.pdf", source="/x/d2.pdf"))
    await rig.send("d2", 0, range(2))
    await rig.registry.forget("default", "d2")  # deleted while indexing
    await rig.send("d2", 1, range(2, 4), last=True)
    assert await rig.store.count_document("d2", "default", staged=True) == 0
    assert await rig.store.count_document("d2", "default") == 0
    assert await rig.registry.get("default", "d2") is None
