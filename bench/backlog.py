"""Queries first: a query's time to first token with a 10,000-chunk ingest backlog vs with none.

One ``python -m workers`` process with the real ONNX embedder and qdrant-edge store,
SmolLM2 behind llama_cpp.server when it is installed (else the instant fake LLM), and
queries asked one after another through the job stream. Baseline: the same questions on
the same worker with an empty ingest stream, measured in the same run just before.
The backlog is ingest batches of synthetic 180-word chunks, sent as the ingest producer
sends them (JobQueue.enqueue on the ingest stream, staged: invisible to queries until the
document is whole; visible, they would change the questions' sources and lengthen the prompts).
"""

from __future__ import annotations

import asyncio
import time

from bench.corpus import chunk_texts
from bench.harness import Context, Row, StreamClient, pct, service_env, settings_of, start_fake_openai, start_worker
from core.protocol import ChunkIn, Document, EventKind, IngestBatch, chunk_id, new_id, new_job
from tests.pdfs import FACTS, write_pdf

QUESTIONS = ["What does the Zephyr turbine do?", "Where is marmalade made?", "What does Helios compile?",
             "How do kelp forests store energy?"]


async def ttft(client: StreamClient, question: str) -> float:
    sent = time.perf_counter()
    job_id = await client.submit(question)
    await client.until(job_id, stop=frozenset({EventKind.TOKEN, EventKind.ERROR}), timeout_s=120)
    elapsed = time.perf_counter() - sent
    await client.until(job_id, timeout_s=120)  # let it finish: one answer at a time
    return elapsed


async def flood(client: StreamClient, chunks: int, batch: int = 32) -> None:
    texts = chunk_texts(min(chunks, 2_000))
    doc = Document(id=new_id(), file="backlog.pdf", source="/bench/backlog.pdf", title="backlog", pages=chunks)
    job_id = new_id()
    for start in range(0, chunks, batch):
        # Staged, as the ingest producer sends a document until it is whole: the questions' sources
        # (and so their prompts) stay the same as without the backlog.
        message = IngestBatch(document=doc, staged=True, chunks=[
            ChunkIn(id=chunk_id(doc.id, i), text=texts[i % len(texts)], page=i + 1, page_end=i + 1, index=i)
            for i in range(start, min(start + batch, chunks))])
        await client.queue.enqueue(new_job(message, job_id=job_id), client.keys.ingest)


async def run(ctx: Context) -> list[Row]:
    backlog = 2_000 if ctx.quick else 10_000
    rounds = 3 if ctx.quick else 8
    try:
        from bench.llm import start_llm

        _, llm_url = start_llm(ctx, ctx.tmp / "backlog-llm.log", interrupt=False)
        llm = "SmolLM2 (llama_cpp.server)"
        overrides = {"llm_backend": "openai", "llm_base_url": llm_url, "llm_model": "smollm2", "llm_max_tokens": "16"}
    except ImportError:
        llm_url = start_fake_openai(ctx, ctx.tmp / "backlog-fake.log")
        llm = "instant fake LLM"
        overrides = {"llm_backend": "openai", "llm_base_url": llm_url}
    env = service_env(ctx.redis_url, ctx.prefix("backlog"), ctx.dir("backlog"), ingest_chunk_words="60", **overrides)
    start_worker(ctx, env, ctx.tmp / "backlog-worker.log")
    settings = settings_of(env)
    client = StreamClient(settings)
    try:
        # Index a small document so answers have sources, through the real producer.
        from ingest.producer import Producer

        await Producer(client.redis, settings).run([write_pdf(ctx.dir("backlog-pdf") / "facts.pdf", FACTS)],
                                                    lambda *_: None)
        for q in QUESTIONS[:2]:
            await ttft(client, q)  # warm-up
        idle = [await ttft(client, QUESTIONS[i % len(QUESTIONS)]) for i in range(rounds)]
        await flood(client, backlog)
        await asyncio.sleep(1.0)  # the worker is busy indexing now
        loaded = [await ttft(client, QUESTIONS[i % len(QUESTIONS)]) for i in range(rounds)]
        left = int(await client.redis.xlen(client.keys.ingest))
    finally:
        await client.aclose()
    p50_idle, p50_loaded = pct(idle, 50), pct(loaded, 50)
    rise = (p50_loaded / p50_idle - 1) * 100 if p50_idle else 0.0
    return [
        Row(bench="backlog",
            measure=f"time to first token, {llm}, p50 of {rounds} (p99): with a {backlog:,}-chunk ingest backlog "
                    f"({left:,} batches still queued after) vs none",
            ours=f"{p50_loaded * 1000:.0f} ms ({pct(loaded, 99) * 1000:.0f} ms)",
            baseline=f"{p50_idle * 1000:.0f} ms ({pct(idle, 99) * 1000:.0f} ms)",
            ratio=f"{rise:+.0f}% (target < +20%)"),
    ]

