"""The embedded store at scale: a collection-filtered hybrid search among 200,000 chunks (synthetic vectors).

Ours: the store as the worker keeps it (payload indexes, segments optimized in the
background by workers.store.optimizer), searched the way the worker searches (a dense and
a BM25 prefetch fused by RRF, in the question's collection). Baseline, in the same run: the
same points in a shard as the previous release kept it (no payload index, segments never
optimized: qdrant-edge has no optimizer thread of its own), searched by its dense arm alone.
Also shown: the background optimization's time, and how long queries wait while it runs.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path

import numpy as np
import qdrant_edge as qe

from bench.harness import Context, Row, pct
from core.payload import COLLECTION, ChunkPayload, payload_dict
from workers.sparse import Bm25Encoder
from workers.store import Fusion, PointIn, Search
from workers.store.edge import EdgeStore
from workers.store.optimizer import Optimizer

DIM = 384
COLLECTIONS = 10
WORDS = [f"term{i}" for i in range(20_000)]


def synthetic(n: int, seed: int = 3) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    words = random.Random(seed)
    # Zipf-like word use, as in text: a few words everywhere, most rare.
    weights = [1 / (r + 1) for r in range(len(WORDS))]
    texts = [" ".join(words.choices(WORDS, weights, k=90)) for _ in range(n)]
    return vectors, texts


def questions(n: int, seed: int = 9) -> list[tuple[str, list[float], str]]:
    rng = np.random.default_rng(seed)
    words = random.Random(seed)
    out = []
    for i in range(n):
        v = rng.standard_normal(DIM).astype(np.float32)
        out.append((f"c{i % COLLECTIONS}", (v / np.linalg.norm(v)).tolist(), " ".join(words.sample(WORDS[:3000], 5))))
    return out


def baseline_shard(path: Path, vectors: np.ndarray) -> qe.EdgeShard:
    """The previous release's shard: an unnamed dense vector, no payload index, never optimized."""
    shard = qe.EdgeShard.create(str(path), qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=DIM,
                                                                                     distance=qe.Distance.Cosine)))
    for start in range(0, len(vectors), 2000):
        shard.update(qe.UpdateOperation.upsert_points([
            qe.Point(uuid.UUID(int=start + i + 1), v.tolist(), {COLLECTION: f"c{(start + i) % COLLECTIONS}"})
            for i, v in enumerate(vectors[start:start + 2000])]))
    return shard


def baseline_latency(shard: qe.EdgeShard, qs: list[tuple[str, list[float], str]]) -> list[float]:
    lat = []
    for collection, vector, _ in qs:
        request = qe.QueryRequest(limit=10, query=qe.Query.Nearest(vector), with_payload=True,
                                  filter=qe.Filter(must=[qe.FieldCondition(COLLECTION,
                                                                           match=qe.MatchValue(collection))]))
        t0 = time.perf_counter()
        shard.query(request)
        lat.append(time.perf_counter() - t0)
    return lat


async def ours_latency(store: EdgeStore, bm25: Bm25Encoder, qs: list[tuple[str, list[float], str]]) -> list[float]:
    lat = []
    for collection, vector, words in qs:
        search = Search(collection=collection, dense=vector, sparse=bm25.query(words))
        t0 = time.perf_counter()
        await store.search_batch([search], limit=10, fusion=Fusion())
        lat.append(time.perf_counter() - t0)
    return lat


def ms(lat: list[float]) -> str:
    return f"p50 {pct(lat, 50) * 1000:.2f} ms, p99 {pct(lat, 99) * 1000:.2f} ms"


async def run(ctx: Context) -> list[Row]:
    n = 20_000 if ctx.quick else 200_000
    work = ctx.dir("store")
    vectors, texts = await asyncio.to_thread(synthetic, n)
    qs = questions(50 if ctx.quick else 200)
    shard = await asyncio.to_thread(baseline_shard, work / "baseline", vectors)
    try:
        base = await asyncio.to_thread(baseline_latency, shard, qs)
    finally:
        shard.close()
    bm25 = Bm25Encoder()
    store = await EdgeStore.open(work / "ours", DIM, bm25=bm25)
    try:
        t0 = time.perf_counter()
        for start in range(0, n, 2000):
            batch = texts[start:start + 2000]
            sparse = bm25.documents(batch)
            await store.upsert([
                PointIn(str(uuid.UUID(int=start + i + 1)), vectors[start + i].tolist(),
                        payload_dict(ChunkPayload(collection=f"c{(start + i) % COLLECTIONS}", document_id="d",
                                                  file="f.pdf", page=1, page_end=1, index=start + i, text="")),
                        sparse[i])
                for i in range(len(batch))])
        upsert_s = time.perf_counter() - t0
        unoptimized = await ours_latency(store, bm25, qs)
        # The worker's background optimization, timed, with queries running all along.
        optimizer = Optimizer(store, threshold=1)
        task = asyncio.create_task(optimizer.optimize_once())
        t0 = time.perf_counter()
        during: list[float] = []
        while not task.done():
            during += await ours_latency(store, bm25, qs[:5])
            await asyncio.sleep(0.05)
        await task
        optimize_s = time.perf_counter() - t0
        optimized = await ours_latency(store, bm25, qs)
        info = await store.info()
    finally:
        await store.aclose()
    per = n // COLLECTIONS
    measure = (f"{n:,} chunks in {COLLECTIONS} collections of {per:,}: a search filtered to one collection "
               f"(top 10), synthetic vectors")
    return [
        Row(bench="store", measure=measure + "; ours: hybrid (dense + BM25, weighted DBSF), payload indexes, optimized",
            ours=ms(optimized), baseline=f"dense only, no payload index, never optimized: {ms(base)}",
            ratio=f"{pct(base, 50) / pct(optimized, 50):.0f}x faster (p50)"),
        Row(bench="store", measure="the same hybrid search before the background optimization (indexes only)",
            ours=ms(unoptimized), baseline=ms(base), ratio=f"{pct(base, 50) / pct(unoptimized, 50):.1f}x faster"),
        Row(bench="store", measure=f"background optimization of the {n:,} chunks in a child process "
            f"({info.segments_count} segments after it); queries meanwhile",
            ours=f"{optimize_s:.0f} s; {len(during)} queries during it: {ms(during) if during else 'none'}",
            baseline=f"upserting them took {upsert_s:.0f} s"),
    ]
