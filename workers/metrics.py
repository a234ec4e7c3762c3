"""A worker process's metrics: counters kept in one Redis hash, so any process (tests, benchmarks) can read them,
and everything the process exports to Prometheus on its own /metrics (RAG_WORKER_METRICS_PORT).

Every counter ``Metrics.incr`` takes is both: one increment goes to the hash and to its Prometheus counter. The
timings are histograms in seconds, each measured from the moment the job's message was added to its stream (its
entry id), as its client waits: queue wait, then time to sources, then time to first token.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram, start_http_server
from redis.exceptions import RedisError

from core.autopipeline import autopipeline
from core.hub import entry_key
from core.keys import stream_label
from core.metrics import ProcessMetrics
from core.protocol import now_ms

if TYPE_CHECKING:
    import numpy as np
    from redis.asyncio import Redis

    from workers.consumer import Delivery
    from workers.embedder import Embedder, Reservation

log = structlog.get_logger("workers.metrics")

#: The counters ``Metrics.incr`` takes, by their name in ``<p>:metrics``: their Prometheus name and meaning.
COUNTERS: dict[str, tuple[str, str]] = {
    "answers": ("rag_answers", "Answers written in full (their done event)"),
    "token_events": ("rag_token_events", "Token events written (tokens are coalesced, RAG_WORKER_TOKEN_FLUSH_MS)"),
    "cancelled": ("rag_jobs_cancelled", "Questions their client cancelled, before or during their answer"),
    "failed": ("rag_jobs_failed", "Jobs that ended in an error event (then dead-lettered)"),
    "lookups": ("rag_lookups", "Embedding jobs and page lookups answered"),
    "query_batches": ("rag_query_batches", "Micro-batches of questions retrieved"),
    "query_embed_calls": ("rag_query_embed_calls", "Embedder calls for the questions of a micro-batch"),
    "queries_embedded": ("rag_queries_embedded", "Questions embedded"),
    "searches": ("rag_searches", "Batched searches of the store"),
    "rerank_failures": ("rag_rerank_failures", "Questions whose reranking failed (the fused order stood)"),
    "ingest_batches": ("rag_ingest_batches", "Ingest messages (chunk batches) indexed"),
    "ingest_embed_calls": ("rag_ingest_embed_calls", "Embedder calls for ingest batches"),
    "chunks_indexed": ("rag_ingest_chunks_indexed", "Chunks embedded and written to the store"),
    "documents_published": ("rag_documents_published", "Documents made searchable (their last batch indexed)"),
}

#: From a message's arrival to a worker taking it: milliseconds when idle, up to minutes in a backlog.
QUEUE_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: Retrieval: tens of milliseconds (embedded store), seconds with a remote embedder or reranker.
SOURCES_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
#: A small local LLM's prefill takes 1-3 s on 2 cores; a hosted one, under a second.
FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 8, 13, 20, 30, 60)
GENERATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
EMBED_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SEARCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
#: Texts per embedder call, questions per search: up to RAG_LIMITS_EMBED_INPUTS_MAX plus a micro-batch.
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

#: The label values known in advance: their series exist (at 0) from the start.
STREAMS = ("queries", "ingest")
EMBED_KINDS = ("query", "ingest")
TAKEOVERS = ("claim", "resume")


def _since(entry_id: bytes, now: int) -> float:
    """Seconds from a stream entry's id (the time Redis added it) to ``now`` (ms); 0 for a clock behind it."""
    return max(0, now - entry_key(entry_id)[0]) / 1000


class WorkerMetrics(ProcessMetrics):
    """What a worker process exports on its /metrics. Labels are few and bounded: stream, kind, how, error code."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.counters = {name: PromCounter(metric, doc, registry=r) for name, (metric, doc) in COUNTERS.items()}
        self.queue_wait = Histogram(
            "rag_queue_wait_seconds", "From a job's message added to its stream (queries or ingest) to a worker "
            "taking it", ["stream"], buckets=QUEUE_WAIT_BUCKETS, registry=r)
        self.time_to_sources = Histogram(
            "rag_time_to_sources_seconds", "From a question's message added to its sources event written",
            buckets=SOURCES_BUCKETS, registry=r)
        self.time_to_first_token = Histogram(
            "rag_time_to_first_token_seconds", "From a question's message added to the first token of its answer",
            buckets=FIRST_TOKEN_BUCKETS, registry=r)
        self.generation = Histogram(
            "rag_generation_seconds", "From an answer's generation started to its last token (answers that ended)",
            buckets=GENERATION_BUCKETS, registry=r)
        self.embed_batch_size = Histogram(
            "rag_embed_batch_size", "Texts per embedder call, by kind: query (questions, embedding jobs, the "
            "sources' sentences) or ingest (chunks)", ["kind"], buckets=SIZE_BUCKETS, registry=r)
        self.embed_seconds = Histogram(
            "rag_embed_seconds", "Embedder calls' duration, by kind; ingest calls wait while questions are embedded",
            ["kind"], buckets=EMBED_BUCKETS, registry=r)
        self.search_batch_size = Histogram(
            "rag_search_batch_size", "Questions per batched search of the store", buckets=SIZE_BUCKETS, registry=r)
        self.search_seconds = Histogram(
            "rag_search_seconds", "Batched searches' duration (every arm, fused)", buckets=SEARCH_BUCKETS, registry=r)
        self.claimed = PromCounter(
            "rag_jobs_claimed", "Jobs taken over from a consumer that died: claimed once idle RAG_WORKER_CLAIM_IDLE_MS "
            "(how=claim), or resumed by the worker that took its name back (how=resume)", ["stream", "how"],
            registry=r)
        self.dead_lettered = PromCounter(
            "rag_jobs_dead_lettered", "Jobs moved to the dead-letter stream, by stream and error code",
            ["stream", "code"], registry=r)
        for stream in STREAMS:
            self.queue_wait.labels(stream)
            for how in TAKEOVERS:
                self.claimed.labels(stream, how)
        for kind in EMBED_KINDS:
            self.embed_batch_size.labels(kind)
            self.embed_seconds.labels(kind)

    def taken(self, deliveries: list[Delivery]) -> None:
        """Messages a consumer has just read: their queue wait."""
        now = now_ms()
        for delivery in deliveries:
            self.queue_wait.labels(stream_label(delivery.stream)).observe(_since(delivery.entry_id, now))

    def sources_written(self, deliveries: list[Delivery]) -> None:
        now = now_ms()
        for delivery in deliveries:
            self.time_to_sources.observe(_since(delivery.entry_id, now))

    def first_token(self, delivery: Delivery) -> None:
        self.time_to_first_token.observe(_since(delivery.entry_id, now_ms()))

    def generated(self, seconds: float) -> None:
        self.generation.observe(seconds)

    def searched(self, questions: int, seconds: float) -> None:
        self.search_batch_size.observe(questions)
        self.search_seconds.observe(seconds)

    def took_over(self, stream: str, how: str, jobs: int) -> None:
        self.claimed.labels(stream_label(stream), how).inc(jobs)

    def dead_letter(self, stream: str, code: str) -> None:
        self.dead_lettered.labels(stream_label(stream), code).inc()

    def metered(self, embedder: Embedder) -> MeteredEmbedder:
        """``embedder``, its calls sized and timed."""
        return MeteredEmbedder(embedder, self)

    def serve(self, host: str, port: int) -> Callable[[], Awaitable[None]]:
        """Serve /metrics on ``host:port`` from a thread of prometheus_client's (the registry is thread-safe);
        returns what stops it. A port already taken is an error that names the settings."""
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise OSError(f"cannot serve /metrics on {host}:{port} ({exc.strerror or exc}): give each worker process "
                          "its own RAG_WORKER_METRICS_PORT, or 0 for none") from None
        log.info("metrics_serving", url=f"http://{host}:{server.server_port}/metrics")

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(5)

        async def stopping() -> None:
            await asyncio.to_thread(stop)

        return stopping


class MeteredEmbedder:
    """An embedder whose calls are sized and timed by kind: query (urgent) or ingest."""

    def __init__(self, embedder: Embedder, metrics: WorkerMetrics) -> None:
        self._embedder = embedder
        self.dim = embedder.dim
        self._sizes = {urgent: metrics.embed_batch_size.labels(kind) for urgent, kind in ((True, "query"),
                                                                                           (False, "ingest"))}
        self._seconds = {urgent: metrics.embed_seconds.labels(kind) for urgent, kind in ((True, "query"),
                                                                                          (False, "ingest"))}

    async def embed(self, texts: list[str], *, urgent: bool = False) -> np.ndarray:
        started = time.perf_counter()
        rows = await self._embedder.embed(texts, urgent=urgent)
        self._seconds[urgent].observe(time.perf_counter() - started)
        self._sizes[urgent].observe(len(texts))
        return rows

    def reserve(self) -> Reservation:
        return self._embedder.reserve()

    async def aclose(self) -> None:
        await self._embedder.aclose()


class Metrics:
    """``incr`` counts locally at once, on the exported counters at once, and in ``<p>:metrics`` soon after:
    embed calls, answers...

    Nobody waits for a counter: what is counted while a write is in flight goes out in the
    next one, one HINCRBY per counter.
    """

    def __init__(self, redis: Redis, key: str, exported: WorkerMetrics | None = None) -> None:
        self._pipe = autopipeline(redis)
        self._key = key
        #: What the process exports on /metrics (its own registry when none is given).
        self.exported = exported or WorkerMetrics()
        self.local: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self._writing: asyncio.Task[None] | None = None

    def incr(self, **counts: int) -> None:
        for name, value in counts.items():
            self.exported.counters[name].inc(value)
        self.local.update(counts)
        self._pending.update(counts)
        if self._writing is None:
            self._writing = asyncio.get_running_loop().create_task(self._write())

    async def flush(self) -> None:
        """Write what is still pending (at shutdown)."""
        if self._writing is not None:
            await self._writing
        if self._pending:
            self._writing = asyncio.get_running_loop().create_task(self._write())
            await self._writing

    async def _write(self) -> None:
        try:
            while self._pending:
                counts, self._pending = self._pending, Counter()
                try:
                    await self._pipe.many(*(("HINCRBY", self._key, name, value) for name, value in counts.items()))
                except (RedisError, OSError) as exc:
                    self._pending.update(counts)  # written with the next counts
                    log.warning("metrics_write_failed", error=str(exc))
                    return
        finally:
            self._writing = None
