"""The scale-out backends: Qdrant server through AsyncQdrantClient, OpenAI-compatible embeddings."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from core.protocol import Query, chunk_id, new_job
from core.settings import EmbedderSettings
from tests.conftest import make_settings
from tests.fake_openai import hash_embedding
from tests.workers_inproc import running_worker
from workers.embedder import OnnxEmbedder, OpenAIEmbedder
from workers.store import Fusion, PointIn, Search, VectorStore
from workers.store.edge import EdgeStore
from workers.store.server import ServerStore


def _points(collection: str, texts: list[str], embed) -> list[PointIn]:  # type: ignore[no-untyped-def]
    vectors = embed(texts)
    return [PointIn(chunk_id(collection, i), list(map(float, v)),
                    {"collection": collection, "text": t, "file": f"{collection}.pdf", "page": i + 1})
            for i, (t, v) in enumerate(zip(texts, vectors))]


TEXTS = ["tidal turbines make electricity", "kelp forests store carbon", "compilers emit WebAssembly"]


async def check_store(store: VectorStore, embed) -> None:  # type: ignore[no-untyped-def]
    await store.upsert(_points("a", TEXTS, embed) + _points("b", TEXTS[::-1], embed))
    assert await store.count() == 6
    queries = embed(["electricity from the tides", "WebAssembly compiler"])
    results = await store.search_batch([Search(collection=c, dense=list(map(float, q)))
                                        for c, q in zip(["a", "b"], queries)], limit=2, fusion=Fusion())
    assert [len(r) for r in results] == [2, 2]
    assert results[0][0].payload["text"] == TEXTS[0] and results[0][0].payload["collection"] == "a"
    assert results[1][0].payload["text"] == TEXTS[2] and results[1][0].payload["collection"] == "b"
    assert results[0][0].score >= results[0][1].score
    # Upserting the same ids again overwrites: no duplicates.
    await store.upsert(_points("a", TEXTS, embed))
    assert await store.count() == 6


@pytest.fixture(scope="module")
def onnx() -> OnnxEmbedder:
    return OnnxEmbedder(EmbedderSettings())


async def test_server_store_on_async_qdrant_client(onnx: OnnxEmbedder) -> None:
    store = await ServerStore.open(":memory:", None, "chunks", onnx.dim)
    try:
        await check_store(store, onnx.embed_sync)
    finally:
        await store.aclose()


async def test_edge_store_same_contract(onnx: OnnxEmbedder, tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "shard", onnx.dim)
    await check_store(store, onnx.embed_sync)
    await store.aclose()
    reopened = EdgeStore(tmp_path / "shard", onnx.dim)  # data survives a restart
    assert await reopened.count() == 6
    await reopened.aclose()


async def test_openai_embedder_against_compatible_server(fake_llm: str) -> None:
    embedder = OpenAIEmbedder(EmbedderSettings(backend="openai", base_url=fake_llm, model="fake"))
    await embedder.start()
    assert embedder.dim == 64
    vectors = await embedder.embed(TEXTS)
    assert np.allclose(vectors[1], np.asarray(hash_embedding(TEXTS[1])), atol=1e-6)
    await embedder.aclose()


async def test_worker_on_qdrant_server_and_openai_backends(redis_url: str, prefix: str, tmp_path: Path,
                                                           fake_llm: str) -> None:
    from core.keys import Keys
    from core.queue import JobQueue
    from core.redis import connect
    from ingest.producer import Producer
    from tests.pdfs import write_pdf

    settings = make_settings(redis_url, prefix, tmp_path, qdrant_url=":memory:", embedder_backend="openai",
                             embedder_base_url=fake_llm, llm_backend="openai", llm_base_url=fake_llm,
                             ingest_chunk_words="30", ingest_overlap_words="0")
    async with running_worker(settings):
        redis = connect(settings.redis)
        results = await asyncio.wait_for(
            Producer(redis, settings).run([write_pdf(tmp_path / "x.pdf")], lambda *_: None), 30)
        assert results[0].status == "sent"
        keys = Keys(prefix)
        job = new_job(Query(question="bitter oranges harvested in January for marmalade"))
        await JobQueue(redis, keys, settings.limits).submit(job, keys.queries, {"question": "x"})
        reply = None
        for _ in range(100):
            reply = await redis.xrevrange(keys.events(job.id), count=1)
            if reply and reply[0][1][b"type"] == b"done":
                break
            await asyncio.sleep(0.05)
        assert reply and reply[0][1][b"type"] == b"done"
        sources = [f for _, f in await redis.xrange(keys.events(job.id)) if f[b"type"] == b"sources"]
        assert b"Seville" in sources[0][b"data"]
        await redis.aclose()
