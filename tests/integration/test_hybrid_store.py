"""Hybrid search on both stores with the real embedder and BM25; payload indexes; migrating a schema-1
store; the embedded shard optimized in a child process while it serves."""

from __future__ import annotations

import asyncio
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import qdrant_edge as qe

from core.payload import (
    COLLECTION,
    DOCUMENT_ID,
    INDEX,
    NAV_KIND,
    SPARSE,
    ChunkPayload,
    indexed_text,
    payload_dict,
)
from core.protocol import chunk_id
from core.settings import EmbedderSettings
from workers.embedder import OnnxEmbedder
from workers.sparse import Bm25Encoder
from workers.store import Fusion, PointIn, Search, VectorStore
from workers.store.edge import CURRENT, EdgeStore, read_current
from workers.store.optimizer import Optimizer
from workers.store.server import ServerStore

#: (context, text): the chunk that answers "R_LIBS_USER" only names it; the dense arm prefers prose.
CHUNKS = [
    ("Admin > Libraries", "Users can have one or more libraries, normally named by the variable R_LIBS_USER."),
    ("Admin > Libraries", "A library is a directory that holds installed packages for everyone on the machine."),
    ("Intro > Packages", "Packages extend R with functions, data and documentation that others have written."),
    ("Intro > Data", "read.csv reads a file of comma separated values into a data frame."),
    ("Contents", "Libraries . . . . . 12 Packages . . . . . 14 R_LIBS_USER . . . . . 29 read.csv . . . . . 40"),
]


@pytest.fixture(scope="module")
def onnx() -> OnnxEmbedder:
    return OnnxEmbedder(EmbedderSettings())


def points(embedder: OnnxEmbedder, bm25: Bm25Encoder, collection: str = "manuals") -> list[PointIn]:
    texts = [indexed_text(c, t) for c, t in CHUNKS]
    dense = embedder.embed_sync(texts)
    out = []
    for i, ((context, text), vector, sparse) in enumerate(zip(CHUNKS, dense, bm25.documents(texts))):
        payload = ChunkPayload(collection=collection, document_id="d1", file="m.pdf", page=i + 1, page_end=i + 1,
                               index=i, text=text, context=context,
                               kind=NAV_KIND if context == "Contents" else "content")
        out.append(PointIn(chunk_id("d1", i), vector.tolist(), payload_dict(payload), sparse))
    return out


@pytest.fixture(params=["edge", "server"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, onnx: OnnxEmbedder) -> AsyncIterator[VectorStore]:
    s: VectorStore = (await EdgeStore.open(tmp_path / "qdrant", onnx.dim) if request.param == "edge"
                      else await ServerStore.open(":memory:", None, "chunks", onnx.dim))
    try:
        yield s
    finally:
        await s.aclose()


async def search(store: VectorStore, onnx: OnnxEmbedder, question: str, *, dense: bool = True, sparse: bool = True,
                 collection: str = "manuals", **fusion: object) -> list[int]:
    q = Search(collection=collection, dense=onnx.embed_sync([question])[0].tolist() if dense else None,
               sparse=Bm25Encoder().query(question) if sparse else None)
    hits = (await store.search_batch([q], limit=5, fusion=Fusion(**fusion)))[0]  # type: ignore[arg-type]
    return [int(h.payload["index"]) for h in hits]


async def test_hybrid_finds_the_exact_name_and_keeps_the_dense_arms_recall(store: VectorStore,
                                                                           onnx: OnnxEmbedder) -> None:
    await store.upsert(points(onnx, Bm25Encoder()))
    question = "which variable names my personal R_LIBS_USER library"
    assert (await search(store, onnx, question, dense=False))[0] == 0  # BM25 alone: the exact name
    assert (await search(store, onnx, question))[0] == 0  # fused: still first
    for method in ("rrf", "dbsf"):
        assert (await search(store, onnx, question, method=method))[0] == 0
    # A paraphrase without the name: the dense arm carries it.
    assert (await search(store, onnx, "how do I load a spreadsheet exported as CSV", sparse=False))[0] == 3
    assert (await search(store, onnx, "how do I load a spreadsheet exported as CSV"))[0] == 3


async def test_a_question_of_stopwords_only_gets_the_dense_arm(store: VectorStore, onnx: OnnxEmbedder) -> None:
    await store.upsert(points(onnx, Bm25Encoder()))
    assert Bm25Encoder().query("what is the of and") is None
    assert len(await search(store, onnx, "what is the of and")) == 5  # every chunk, by the dense arm
    # Neither arm: nothing to search, no error.
    assert await search(store, onnx, "?", dense=False, sparse=False) == []


async def test_other_collections_are_not_searched_or_counted_for_idf(store: VectorStore, onnx: OnnxEmbedder) -> None:
    await store.upsert(points(onnx, Bm25Encoder(), "manuals") + points(onnx, Bm25Encoder(), "other")[:1])
    assert await search(store, onnx, "R_LIBS_USER", collection="nothing-here") == []
    assert len(await search(store, onnx, "R_LIBS_USER", collection="other")) == 1


async def test_edge_store_has_every_payload_index(tmp_path: Path, onnx: OnnxEmbedder) -> None:
    store = await EdgeStore.open(tmp_path / "qdrant", onnx.dim)
    try:
        schema = (await store.info()).payload_schema
        assert {COLLECTION, DOCUMENT_ID, INDEX} <= set(schema)
    finally:
        await store.aclose()


async def test_server_collection_has_the_bm25_vector_and_its_schema(onnx: OnnxEmbedder) -> None:
    # (":memory:" keeps no payload indexes, so they cannot be checked here; the edge test checks the same list.)
    store = await ServerStore.open(":memory:", None, "chunks", onnx.dim)
    try:
        info = await store._client.get_collection("chunks")
        assert SPARSE in info.config.params.sparse_vectors
        assert info.config.metadata["rag_schema"] == 2
    finally:
        await store.aclose()


def schema1_shard(path: Path, onnx: OnnxEmbedder, n: int) -> None:
    """A shard as the previous release wrote it: one unnamed dense vector, the files directly in the folder."""
    config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=onnx.dim, distance=qe.Distance.Cosine))
    shard = qe.EdgeShard.create(str(path), config)
    texts = [f"Chunk {i} about tidal turbines and harvest {i}" for i in range(n - 1)] + [
        "Users can have libraries named by the variable R_LIBS_USER."]
    vectors = onnx.embed_sync(texts)
    shard.update(qe.UpdateOperation.upsert_points([
        qe.Point(uuid.UUID(chunk_id("d1", i)), v.tolist(),
                 {"collection": "default", "document_id": "d1", "file": "a.pdf", "title": "Admin", "page": i + 1,
                  "page_end": i + 1, "index": i, "section": "Libraries", "text": t})
        for i, (t, v) in enumerate(zip(texts, vectors))]))
    shard.flush()
    shard.close()


async def test_a_schema1_shard_is_migrated_at_open_and_loses_nothing(tmp_path: Path, onnx: OnnxEmbedder) -> None:
    root = tmp_path / "qdrant"
    schema1_shard(root, onnx, 600)  # more than one migration step
    store = await EdgeStore.open(root, onnx.dim)
    try:
        assert read_current(root) == "gen-0" and (root / "gen-0" / "segments").is_dir()
        assert not (root / "segments").exists()
        assert await store.count() == 600
        # Every point has its BM25 vector: the BM25 arm alone finds the exact name.
        assert (await search(store, onnx, "R_LIBS_USER", dense=False, collection="default"))[0] == 599
        assert {COLLECTION, DOCUMENT_ID, INDEX} <= set((await store.info()).payload_schema)
    finally:
        await store.aclose()
    assert (root / "gen-0" / "rag-schema").read_text().strip() == "2"  # opening it again migrates nothing


async def test_a_migration_cut_short_resumes(tmp_path: Path, onnx: OnnxEmbedder) -> None:
    root = tmp_path / "qdrant"
    schema1_shard(root, onnx, 300)
    # The crash came half way through moving the files into gen-0.
    moving = root / "gen-0.moving"
    moving.mkdir()
    shutil.move(str(root / "segments"), str(moving / "segments"))
    store = await EdgeStore.open(root, onnx.dim)
    try:
        assert await store.count() == 300
        assert (await search(store, onnx, "R_LIBS_USER", dense=False, collection="default"))[0] == 299
    finally:
        await store.aclose()


async def test_a_schema1_server_collection_is_copied_into_v2(onnx: OnnxEmbedder) -> None:
    from qdrant_client import AsyncQdrantClient, models

    client = AsyncQdrantClient(location=":memory:")
    await client.create_collection("chunks", vectors_config=models.VectorParams(size=onnx.dim,
                                                                                 distance=models.Distance.COSINE))
    texts = [f"Chunk {i} about tidal turbines" for i in range(299)] + ["variable R_LIBS_USER names libraries"]
    await client.upsert("chunks", points=[
        models.PointStruct(id=chunk_id("d1", i), vector=v.tolist(),
                           payload={"collection": "default", "document_id": "d1", "index": i, "text": t,
                                    "title": "Admin", "page": i + 1, "page_end": i + 1, "file": "a.pdf"})
        for i, (t, v) in enumerate(zip(texts, onnx.embed_sync(texts)))])
    store = ServerStore(client, "chunks", onnx.dim)
    await store.ensure_collection()
    try:
        assert store.collection == "chunks_v2"
        assert await store.count() == 300
        assert int((await client.count("chunks", exact=True)).count) == 300  # the old one is kept
        assert (await search(store, onnx, "R_LIBS_USER", dense=False, collection="default"))[0] == 299
        meta = (await client.get_collection("chunks_v2")).config.metadata
        assert meta["rag_complete"] is True
        # A second start serves the copy without copying again.
        again = ServerStore(client, "chunks", onnx.dim)
        await again.ensure_collection()
        assert again.collection == "chunks_v2"
    finally:
        await store.aclose()


async def test_optimized_generation_keeps_every_update_made_while_it_was_built(tmp_path: Path,
                                                                               onnx: OnnxEmbedder) -> None:
    root = tmp_path / "qdrant"
    store = await EdgeStore.open(root, onnx.dim)
    bm25 = Bm25Encoder()
    try:
        base = points(onnx, bm25)
        many = [PointIn(chunk_id("bulk", i), base[i % 4].vector, {**base[i % 4].payload, "document_id": "bulk",
                                                                   "index": i}, base[i % 4].sparse)
                for i in range(3000)]
        await store.upsert(many)
        target = await store.copy_for_optimizing()
        # While the child optimizes the copy, the live shard keeps serving and changing.
        await store.upsert(base)
        assert await store.delete_document("bulk", "manuals") == 3000
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "workers.store.optimizer", str(target))
        assert await proc.wait() == 0
        replayed = await store.adopt(target)
        assert replayed == 2
        assert store.generation == "gen-1" and read_current(root) == "gen-1"
        assert not (root / "gen-0").exists()
        assert await store.count() == len(base)
        assert (await search(store, onnx, "R_LIBS_USER"))[0] == 0
    finally:
        await store.aclose()
    reopened = await EdgeStore.open(root, onnx.dim)  # the new generation is what opens next time
    try:
        assert reopened.generation == "gen-1" and await reopened.count() == len(base)
    finally:
        await reopened.aclose()


async def test_optimizer_runs_in_a_child_and_queries_never_wait(tmp_path: Path, onnx: OnnxEmbedder) -> None:
    root = tmp_path / "qdrant"
    store = await EdgeStore.open(root, onnx.dim)
    try:
        base = points(onnx, Bm25Encoder())
        await store.upsert([PointIn(str(uuid.uuid4()), base[i % 5].vector, base[i % 5].payload, base[i % 5].sparse)
                            for i in range(8_000)])
        optimizer = Optimizer(store, threshold=1000)
        run = asyncio.create_task(optimizer.optimize_once())
        waits = []
        while not run.done():
            t0 = asyncio.get_running_loop().time()
            await search(store, onnx, "R_LIBS_USER", dense=False)
            waits.append(asyncio.get_running_loop().time() - t0)
            await asyncio.sleep(0.02)
        assert await run
        assert len(waits) > 10 and max(waits) < 1.0  # the optimize itself ran elsewhere (it takes seconds)
        info = await store.info()
        assert info.indexed_vectors_count >= 2 * 8_000  # dense vectors indexed (HNSW) as well as sparse
        assert store.pending == 0 and (root / CURRENT).read_text().strip() == "gen-1"
    finally:
        await store.aclose()
