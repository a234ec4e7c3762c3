"""Per-document store operations, the same contract on qdrant-edge and the Qdrant server adapter."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from core.payload import staging
from core.protocol import chunk_id
from workers.store import Fusion, PointIn, Search, VectorStore
from workers.store.edge import EdgeStore
from workers.store.server import ServerStore

DIM = 8


def _points(doc: str, n: int, collection: str, *, start: int = 0) -> list[PointIn]:
    rng = np.random.default_rng(abs(hash(doc)) % 2**32)
    return [
        PointIn(chunk_id(f"{collection}/{doc}", i), list(map(float, rng.random(DIM))),
                {"collection": collection, "document_id": doc, "index": i, "text": f"{doc} {i}"})
        for i in range(start, start + n)
    ]


@pytest.fixture(params=["edge", "server"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    s: VectorStore = (EdgeStore(tmp_path / "shard", DIM) if request.param == "edge"
                      else await ServerStore.open(":memory:", None, "chunks", DIM))
    try:
        yield s
    finally:
        await s.aclose()


async def _visible(store: VectorStore, collection: str) -> set[str]:
    hits = await store.search_batch([Search(collection=collection, dense=[1.0] * DIM)], limit=100, fusion=Fusion())
    return {h.payload["text"] for h in hits[0]}


async def test_publish_unstages_and_replaces(store: VectorStore) -> None:
    await store.upsert(_points("old", 3, "default") + _points("other", 2, "default") + _points("old", 1, "b"))
    await store.upsert(_points("new", 4, staging("default")))
    # Staged points are invisible to queries until published.
    assert "new 0" not in await _visible(store, "default")
    assert await store.count_document("new", "default", staged=True) == 4
    assert await store.count_document("new", "default") == 0
    await store.publish("new", "default", chunks=4, staged=True, replaces=["old"])
    assert await _visible(store, "default") == {"new 0", "new 1", "new 2", "new 3", "other 0", "other 1"}
    assert await store.count_document("new", "default") == 4
    assert await store.count_document("old", "default") == 0
    assert await store.count_document("old", "b") == 1  # other collections untouched


async def test_publish_in_place_drops_tail_of_a_shorter_chunking(store: VectorStore) -> None:
    await store.upsert(_points("doc", 5, "default"))
    await store.publish("doc", "default", chunks=3, staged=False, replaces=[])
    assert await _visible(store, "default") == {"doc 0", "doc 1", "doc 2"}


async def test_delete_document_counts_visible_and_staged(store: VectorStore) -> None:
    await store.upsert(_points("doc", 3, "default") + _points("doc", 2, staging("default"), start=3)
                       + _points("keep", 2, "default"))
    assert await store.delete_document("doc", "default") == 5
    assert await store.count_document("doc", "default") == 0
    assert await store.count_document("doc", "default", staged=True) == 0
    assert await store.count() == 2
    assert await store.delete_document("doc", "default") == 0


async def test_page_chunks_are_the_documents_chunks_whose_span_holds_the_page(store: VectorStore) -> None:
    spans = [(1, 1), (1, 2), (2, 2), (3, 4)]
    points = [PointIn(p.id, p.vector, {**p.payload, "page": a, "page_end": b})
              for p, (a, b) in zip(_points("doc", 4, "default"), spans)]
    others = [PointIn(p.id, p.vector, {**p.payload, "page": 2, "page_end": 2}) for p in _points("doc", 1, "b")]
    await store.upsert(points + others + _points("doc", 1, staging("default"), start=9))
    assert sorted(h.payload["index"] for h in await store.page_chunks("doc", "default", 2)) == [1, 2]
    assert sorted(h.payload["index"] for h in await store.page_chunks("doc", "default", 4)) == [3]
    assert await store.page_chunks("doc", "default", 5) == []


async def test_a_query_during_publishing_sees_one_version_on_the_embedded_store(tmp_path: Path) -> None:
    """Queries running while a new version is published see the old version or the new one, never both
    and never neither: the swap is one call on the shard's only thread, which queries share. (A Qdrant
    server takes three requests, and may show both for an instant: see the README.)"""
    store = EdgeStore(tmp_path / "shard", DIM)
    try:
        await store.upsert(_points("old", 20, "default"))
        await store.upsert(_points("new", 20, staging("default")))
        seen: list[frozenset[str]] = []
        publishing = True

        async def query() -> None:
            while publishing:
                hits = await store.search_batch([Search(collection="default", dense=[1.0] * DIM)], limit=100,
                                                fusion=Fusion())
                seen.append(frozenset(h.payload["document_id"] for h in hits[0]))

        queries = [asyncio.create_task(query()) for _ in range(8)]
        while len(seen) < 8:  # queries wait on the shard's thread when the swap comes
            await asyncio.sleep(0.001)
        await store.publish("new", "default", chunks=20, staged=True, replaces=["old"])
        after = len(seen) + 8
        while len(seen) < after:
            await asyncio.sleep(0.001)
        publishing = False
        await asyncio.gather(*queries)
    finally:
        await store.aclose()
    assert set(seen) == {frozenset({"old"}), frozenset({"new"})}, Counter(seen)
