"""Batching: the worker's embedding throughput under load vs the raw ONNX model; extractive questions/s.

Raw: ``OnnxEmbedder.embed_sync`` on the same chunk texts, at its best ONNX batch size
(searched first on a sample). Worker: ``python -m workers`` (ONNX embedder, embedded
qdrant-edge) fed the same chunks as ingest batches of RAG_INGEST_BATCH_CHUNKS through
the ingest stream (JobQueue.enqueue, the producer's own call), timed from the first
message to the job's ``done``. Questions: through the query stream with the extractive
generator (no LLM), at 1, 8 and 64 in flight; each is retrieved, then every sentence of its
sources is embedded to choose the answer's (workers.passages). Against raw embedding of one
question per call and of 16 per call (the worker's batch size): the least of that work.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time

from bench.corpus import chunk_texts
from bench.harness import Context, Row, StreamClient, closed_loop, ratio, service_env, settings_of, start_worker
from core.protocol import ChunkIn, Document, EventKind, IngestBatch, chunk_id, new_id, new_job, now_ms
from core.settings import EmbedderSettings, LLMSettings
from workers.embedder import OnnxEmbedder

QUESTIONS = [
    "What does the warranty clause say about liability?", "When is the next delivery milestone?",
    "Which sensor measured the pressure?", "How much did the audit cost?", "Who approved the budget?",
    "What is the termination notice period?", "Which module failed the firmware review?",
    "What margin does the forecast assume?",
]


@functools.cache
def raw_embedder(batch: int) -> OnnxEmbedder:
    """One model per ONNX batch size for the run: loading it is not what is measured."""
    return OnnxEmbedder(EmbedderSettings(onnx_batch=batch))


def raw_rate(texts: list[str], batch: int) -> float:
    embedder = raw_embedder(batch)
    embedder.embed_sync(texts[:batch])  # warm-up: the first runs allocate
    t0 = time.perf_counter()
    embedder.embed_sync(texts)
    return len(texts) / (time.perf_counter() - t0)


def raw_query_rate(per_call: int, seconds: float) -> float:
    embedder = raw_embedder(32)
    embedder.embed_sync(QUESTIONS[:1])
    done = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        embedder.embed_sync([QUESTIONS[(done + i) % len(QUESTIONS)] for i in range(per_call)])
        done += per_call
    return done / (time.perf_counter() - t0)


async def run(ctx: Context) -> list[Row]:
    n = 16 if ctx.smoke else 48 if ctx.quick else 256
    texts = chunk_texts(n)
    sample = texts[: min(64, n)]
    # --quick takes the service's own ONNX batch size instead of searching for the best one.
    sizes = (EmbedderSettings().onnx_batch,) if ctx.quick else (8, 16, 32, 64)
    by_batch = {b: raw_rate(sample, b) for b in sizes} if len(sizes) > 1 else {sizes[0]: 0.0}
    best = max(by_batch, key=lambda b: by_batch[b])
    raw_before = raw_rate(texts, best)
    # Each question's answer embeds every sentence of its sources: at 64 in flight a batch takes seconds
    # on 2 cores, and closed_loop stretches the window to twice the slowest call of its warm-up.
    window = 1.5 if ctx.smoke else 3.0 if ctx.quick else 8.0
    levels = (1,) if ctx.smoke else (1, 8, 64)
    raw_one = raw_query_rate(1, 1.0 if ctx.smoke else min(window, 4.0))
    raw_16 = raw_query_rate(16, min(window, 4.0)) if max(levels) > 1 else 0.0

    work = ctx.dir("batching")
    # The sentence cache off: every question's sentences embedded, as for questions about ever new pages.
    env = service_env(ctx.redis_url, ctx.prefix("batching"), work / "data", llm_sentence_cache="0")
    settings = settings_of(env)
    worker = start_worker(ctx, env, work / "worker.log")
    client = StreamClient(settings)
    try:
        job_id = new_id()
        doc = Document(id="bench-doc", file="bench.pdf", source="bench.pdf", title="bench", pages=n)
        per = settings.ingest.batch_chunks
        await client.queue.create_record(job_id, {"kind": "ingest", "created_ms": now_ms(), "files": 1})
        t0 = time.perf_counter()
        for start in range(0, n, per):
            chunks = [ChunkIn(id=chunk_id(doc.id, i), text=texts[i], page=i + 1, page_end=i + 1, index=i)
                      for i in range(start, min(n, start + per))]
            await client.queue.enqueue(new_job(IngestBatch(document=doc, chunks=chunks), job_id=job_id),
                                        client.keys.ingest)
        await client.events.ingest_sealed(job_id, n)
        events = await client.until(job_id, timeout_s=600)
        worker_rate = n / (time.perf_counter() - t0)
        if events[-1][0] != EventKind.DONE:
            raise RuntimeError(f"ingest failed: {events[-1]}")
        # Raw again with the worker idle: the mean of before and after evens out drift in the
        # machine's other load (it is shared).
        raw_after = await asyncio.to_thread(raw_rate, texts, best)
        raw = (raw_before + raw_after) / 2

        loads = {}
        asked = itertools.count()

        async def one() -> None:
            job = await client.submit(QUESTIONS[next(asked) % len(QUESTIONS)])
            got = await client.until(job, timeout_s=300)  # a batch of 16 answers takes tens of seconds here
            if got[-1][0] != EventKind.DONE:
                raise RuntimeError(f"query failed: {got[-1]}")

        for inflight in levels:
            loads[inflight] = await closed_loop(one, what=f"extractive questions, {inflight} in flight",
                                                inflight=inflight, warmup_s=0.5, measure_s=window)
        # The same worker with its sentence cache (the default): the same questions come back to the same
        # pages, as users of one collection's documents do.
        worker.stop()
        start_worker(ctx, {**env, "RAG_LLM_SENTENCE_CACHE": str(LLMSettings().sentence_cache)},
                     work / "worker-cached.log")
        cached = await closed_loop(one, what=f"extractive questions, {levels[-1]} in flight, sentence cache on",
                                   inflight=levels[-1], warmup_s=0.5, measure_s=window)
    finally:
        await client.aclose()
        raw_embedder.cache_clear()
    tried = ", ".join(f"{b}: {r:.0f}" for b, r in by_batch.items() if r)
    rows = [Row(bench="batching", measure=f"embedding {n} chunks of 180 words: worker (ingest stream, "
                f"batches of {per}) vs raw OnnxEmbedder.embed_sync at its best batch ({best}"
                + (f"; chunks/s by batch on a sample: {tried})" if tried else ")"),
                ours=f"{worker_rate:,.1f} chunks/s",
                baseline=f"{raw:,.1f} chunks/s (before {raw_before:,.1f}, after {raw_after:,.1f})",
                ratio=ratio(worker_rate, raw))]
    for inflight, load in loads.items():
        base, label = (raw_one, "raw embed, 1 question per call") if inflight == 1 else (
            raw_16, "raw embed, 16 questions per call")
        rows.append(Row(bench="batching", measure=f"questions answered extractively (retrieval, then every sentence of "
                        f"the 5 sources embedded, sentence cache off; {n} chunks indexed), {inflight} in flight, vs {label} (the "
                        "question's embedding alone: a floor, not the same work)", ours=load.summary("questions/s"),
                        baseline=f"{base:,.0f} questions/s", ratio=ratio(load.rate, base)))
    cold = loads[levels[-1]]
    rows.append(Row(bench="batching", measure=f"the same, {levels[-1]} in flight, with the worker's sentence cache "
                    f"(RAG_LLM_SENTENCE_CACHE, the default; the same {len(QUESTIONS)} questions asked again and "
                    "again, so after the first round every sentence is kept) vs the cache off, as above",
                    ours=cached.summary("questions/s"), baseline=cold.summary("questions/s"),
                    ratio=ratio(cached.rate, cold.rate)))
    return rows
