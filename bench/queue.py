"""Queue path with the least work, 64 in flight: our worker via Redis Streams and via HTTP+SSE, against RQ and ARQ.

All four share the run's Valkey (own key prefix or queue name each) and one worker
process. Ours runs ``python -m workers`` with the extractive generator and the openai
embedder pointed at bench.fakes (instant embeddings over loopback HTTP): the service
has no in-process no-op embedder, so loopback HTTP calls to it are part of each question.
A one-page document is indexed first, so each question takes the whole path of a real one
(embedding, search, sentence selection, an extractive answer streamed, ``done``): more work
than RQ's and ARQ's no-op functions, none of it skipped.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from bench.harness import (
    LOAD_GENERATOR,
    BenchmarkError,
    Context,
    Load,
    Row,
    StreamClient,
    closed_loop,
    index_pdfs,
    pct,
    ratio,
    server_pid,
    service_env,
    settings_of,
    start_api,
    start_fake_openai,
    start_worker,
)
from core.protocol import EventKind
from tests.pdfs import FACTS, write_pdf
from tests.servers import Proc

INFLIGHT = 64
#: Asked of the indexed one-page document (FACTS[1]): found, so answered, not "not found".
QUESTION = "What does the Zephyr turbine do?"


def _windows(ctx: Context) -> tuple[float, float]:
    """(warm-up, measuring window) in seconds."""
    return (0.2, 0.6) if ctx.smoke else (0.3, 1.0) if ctx.quick else (1.0, 5.0)


async def streams_load(ctx: Context, env: dict[str, str], inflight: int, cpu_of: dict[str, int], what: str) -> Load:
    """(a) Submit with JobQueue.submit (as the API does), read the job's event stream until ``done``."""
    warmup, measure = _windows(ctx)
    client = StreamClient(settings_of(env))
    try:
        async def one() -> None:
            job_id = await client.submit(QUESTION)
            events = await client.until(job_id)
            if events[-1][0] != EventKind.DONE:
                raise BenchmarkError(f"job failed: {events[-1]}")

        return await closed_loop(one, what=what, inflight=inflight, warmup_s=warmup, measure_s=measure,
                                 cpu_of=cpu_of)
    finally:
        await client.aclose()


class AskConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that POSTs /v1/ask and reads its chunked SSE body to the end.

    Written by hand, as wrk and h2load are, because the load generator shares the two cores
    with the service it measures: aiohttp cost about 210 µs of CPU per request, half as much
    as the API itself (httpx 750 µs); this costs a small fraction of that.
    """

    END = b"\r\n0\r\n\r\n"  # the last chunk: SSE events end in a blank line, so no event ends like this

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        if len(self.buffer) >= 12 and not self.buffer.startswith(b"HTTP/1.1 200"):
            self.waiter.set_exception(RuntimeError(f"/v1/ask failed: {bytes(self.buffer[:300])!r}"))
        elif self.buffer.endswith(self.END):
            self.waiter.set_result(bytes(self.buffer))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"the API closed the connection: {exc}"))

    async def ask(self, request: bytes) -> bytes:
        assert self.transport is not None
        self.buffer.clear()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        async with asyncio.timeout(60):
            return await self.waiter


async def http_load(url: str, ctx: Context, inflight: int, cpu_of: dict[str, int], what: str, *,
                    api_key: str | None = None) -> Load:
    """(b) POST /v1/ask and read the SSE stream to its end; one keep-alive connection per caller."""
    host, _, port = url.removeprefix("http://").partition(":")
    body = f'{{"question": "{QUESTION}"}}'.encode()
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    request = (f"POST /v1/ask HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n{auth}"
               f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    idle: list[AskConnection] = []
    opened: list[AskConnection] = []
    warmup, measure = _windows(ctx)

    async def ask() -> None:
        if idle:
            conn = idle.pop()
        else:
            _, conn = await loop.create_connection(AskConnection, host, int(port))
            opened.append(conn)
        reply = await conn.ask(request)
        if b"event: done" not in reply:
            raise BenchmarkError(f"/v1/ask did not end with done: {reply[-300:]!r}")
        idle.append(conn)

    try:
        return await closed_loop(ask, what=what, inflight=inflight, warmup_s=warmup, measure_s=measure,
                                 cpu_of=cpu_of)
    finally:
        for conn in opened:
            if conn.transport is not None:
                conn.transport.close()


async def ours(ctx: Context, *, inflight: int = INFLIGHT, http: bool = True,
               overrides: dict[str, str] | None = None) -> tuple[Load, Load | None]:
    """(a) Redis Streams only, (b) the HTTP API with SSE; one worker process, one API process.

    ``overrides`` are settings for the worker and the API, as ``service_env`` takes them.
    """
    work = ctx.dir("queue")
    fake = start_fake_openai(ctx, work / "fake.log")
    env = service_env(ctx.redis_url, ctx.prefix("queue"), work / "data",
                      embedder_backend="openai", embedder_base_url=fake, **(overrides or {}))
    worker = start_worker(ctx, env, work / "worker.log")
    await index_pdfs(env, [write_pdf(work / "facts.pdf", {1: FACTS[1]})])
    # The fake embedder is left out: it stands for work the service would do anyway.
    cpu_of = {"worker": worker.proc.pid, "Valkey": await server_pid(ctx.redis_url), LOAD_GENERATOR: os.getpid()}
    what = f"our worker ({', '.join(f'{k}={v}' for k, v in (overrides or {}).items()) or 'default settings'}, " \
           f"{inflight} in flight)"
    streams = await streams_load(ctx, env, inflight, cpu_of, f"{what} via Redis Streams")
    sse = None
    if http:
        api, url = start_api(ctx, env, work / "api.log")
        sse = await http_load(url, ctx, inflight, {"API": api.proc.pid, **cpu_of}, f"{what} via /v1/ask")
        api.stop()
    worker.stop()
    return streams, sse


async def rq(ctx: Context) -> Load:
    """RQ 2+/3 with its default forking worker; results fetched with job.latest_result(timeout=...).

    RQ's client is synchronous: each caller runs in a thread of its own.
    """
    import redis
    from rq import Queue
    from rq import Worker as RqWorker

    from bench.baselines import noop

    work = ctx.dir("rq")
    name = ctx.prefix("rq")
    worker = Proc([sys.executable, "-m", "rq.cli", "worker", "--url", ctx.redis_url, name], {}, work / "rq.log")
    ctx.stack.callback(worker.stop)
    conn = redis.Redis.from_url(ctx.redis_url, max_connections=INFLIGHT * 2)
    ctx.stack.callback(conn.close)
    queue = Queue(name, connection=conn)
    deadline = time.monotonic() + 30
    while not any(name in w.queue_names() for w in RqWorker.all(connection=conn)):
        if worker.proc.poll() is not None or time.monotonic() > deadline:
            raise BenchmarkError(f"rq worker did not start: {worker.output()[-2000:]}")
        await asyncio.sleep(0.05)

    def one() -> None:
        job = queue.enqueue(noop)
        result = job.latest_result(timeout=60)
        if result is None or result.return_value != 1:
            raise BenchmarkError(f"rq job {job.id} has no result: {result}")

    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(INFLIGHT, thread_name_prefix="rq-caller") as threads:
        warmup, measure = _windows(ctx)
        return await closed_loop(lambda: loop.run_in_executor(threads, one), what="RQ (forking worker)",
                                 inflight=INFLIGHT, warmup_s=warmup, measure_s=measure)


async def arq(ctx: Context, *, worker_poll: float, max_jobs: int, result_poll: float, what: str) -> Load:
    """ARQ with its own worker; results with job.result(poll_delay=...), as ARQ's docs show."""
    from arq.connections import RedisSettings, create_pool

    work = ctx.dir("arq")
    name = ctx.prefix("arq")
    worker = Proc([sys.executable, "-m", "bench.baselines", "arq", ctx.redis_url, name,
                    str(worker_poll), str(max_jobs)], {}, work / "arq.log")
    ctx.stack.callback(worker.stop)
    pool = await create_pool(RedisSettings.from_dsn(ctx.redis_url), default_queue_name=name)
    try:
        # Wait until ARQ's worker has announced itself (its health-check key).
        deadline = time.monotonic() + 30
        while not await pool.exists(f"{name}:health-check"):
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError(f"arq worker did not start: {worker.output()[-2000:]}")
            await asyncio.sleep(0.05)

        async def one() -> None:
            job = await pool.enqueue_job("noop", _job_id=uuid.uuid4().hex)
            if job is None:
                raise BenchmarkError("arq did not enqueue the job")
            if await job.result(timeout=60, poll_delay=result_poll) != 1:
                raise BenchmarkError("arq job returned the wrong result")

        warmup, measure = _windows(ctx)
        cpu_of = {"worker": worker.proc.pid, "Valkey": await server_pid(ctx.redis_url), LOAD_GENERATOR: os.getpid()}
        return await closed_loop(one, what=what, inflight=INFLIGHT, warmup_s=warmup, measure_s=measure,
                                 cpu_of=cpu_of)
    finally:
        await pool.aclose()


#: Our worker sized for 64 in flight, as ARQ tuned gets max_jobs 64: the defaults (8 answers
#: at once per consumer, batches of 16) are sized for a local LLM, not for no-op jobs.
SIZED = {"worker_max_generations": str(INFLIGHT), "worker_batch_size": str(INFLIGHT)}
#: What each side runs: the whole path of a question for us, a function that returns for RQ and ARQ.
JOBS = "our questions over a one-page document (instant fake embedder, extractive answer) vs their no-op jobs"
TUNED = "ARQ tuned (worker poll 5 ms, max_jobs 64, result poll 5 ms)"
DEFAULTS = "ARQ defaults (poll 0.5 s, max_jobs 10)"


def pair(label: str, load: Load, base: Load) -> Row:
    return Row(bench="queue", measure=f"{label}: {JOBS}, {INFLIGHT} in flight", ours=load.summary(),
               baseline=base.summary(),
               ratio=f"{ratio(load.rate, base.rate)} jobs/s, "
                     f"{ratio(pct(load.latencies, 50), pct(base.latencies, 50), lower_is_better=True)} p50")


def cpu_rows(label: str, load: Load, base: Load, client: str) -> list[Row]:
    """CPU per job in the measuring window: the service processes' apart from the load generators'
    (ours a minimal client, ARQ's its own library), never one sum of both."""
    ours_service, ours_service_text = load.cpu_per_job(client=False)
    base_service, base_service_text = base.cpu_per_job(client=False)
    ours_client, ours_client_text = load.cpu_per_job(client=True)
    base_client, base_client_text = base.cpu_per_job(client=True)
    measure = f"{label}: CPU per job in the measuring window"
    return [
        Row(bench="queue", measure=f"{measure}, service processes (the fake embedder left out)",
            ours=ours_service_text, baseline=base_service_text,
            ratio=f"{ratio(ours_service, base_service, lower_is_better=True)} CPU per job"),
        Row(bench="queue", measure=f"{measure}, load generator: ours {client}; ARQ's, its client "
            "(enqueue_job, job.result)", ours=ours_client_text, baseline=base_client_text,
            ratio=f"{ratio(ours_client, base_client, lower_is_better=True)} CPU per job"),
    ]


async def run(ctx: Context) -> list[Row]:
    sized = "max_generations and batch_size 64"
    streams, sse = await ours(ctx, overrides=SIZED)
    assert sse is not None
    api_row = Row(
        bench="queue", measure=f"(b) HTTP API + SSE vs (a) Redis Streams alone ({sized}): what the API and SSE "
        f"cost, our questions over a one-page document, {INFLIGHT} in flight", ours=sse.summary(),
        baseline=streams.summary(), ratio=f"{ratio(sse.rate, streams.rate)} jobs/s, "
        f"{ratio(pct(sse.latencies, 50), pct(streams.latencies, 50), lower_is_better=True)} p50")
    if ctx.smoke:  # RQ and ARQ come with the bench extra only; the lone-job rows take two more workers
        return [api_row]
    lone_default, _ = await ours(ctx, inflight=1, http=False)
    lone_nowait, _ = await ours(ctx, inflight=1, http=False, overrides={"worker_batch_wait_ms": "0"})
    streams_default, _ = await ours(ctx, http=False)
    rq_load = await rq(ctx)
    arq_tuned = await arq(ctx, worker_poll=0.005, max_jobs=INFLIGHT, result_poll=0.005, what=TUNED)
    arq_default = await arq(ctx, worker_poll=0.5, max_jobs=10, result_poll=0.5, what=DEFAULTS)
    return [
        pair(f"(a) Redis Streams ({sized}) vs {TUNED}", streams, arq_tuned),
        pair(f"(a) Redis Streams (default settings) vs {DEFAULTS}", streams_default, arq_default),
        pair(f"(a) Redis Streams ({sized}) vs RQ (forking worker, latest_result)", streams, rq_load),
        pair(f"(b) HTTP API + SSE ({sized}) vs {TUNED}", sse, arq_tuned),
        pair(f"(b) HTTP API + SSE ({sized}) vs RQ", sse, rq_load),
        *cpu_rows(f"(a) Redis Streams ({sized}) vs {TUNED}", streams, arq_tuned,
                  "JobQueue.submit and an EventHub, as the API does"),
        *cpu_rows(f"(b) HTTP API + SSE ({sized}) vs {TUNED}", sse, arq_tuned, "a minimal HTTP/1.1 client"),
        api_row,
        Row(bench="queue", measure="(a) one job in flight: default RAG_WORKER_BATCH_WAIT_MS=5 vs 0",
            ours=lone_default.summary(), baseline=lone_nowait.summary(),
            ratio=f"{ratio(pct(lone_default.latencies, 50), pct(lone_nowait.latencies, 50), lower_is_better=True)}"
                  " p50"),
    ]
