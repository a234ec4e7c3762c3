"""Queue path with no-op work, 64 in flight: our worker via Redis Streams and via HTTP+SSE, against RQ and ARQ.

All four share the run's Valkey (own key prefix or queue name each) and one worker
process. Ours runs ``python -m workers`` with the extractive generator and the openai
embedder pointed at bench.fakes (instant embeddings over loopback HTTP): the service
has no in-process no-op embedder, so one loopback HTTP call per batch is part of "no-op".
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import uuid

from bench.harness import (
    Context,
    Load,
    Row,
    StreamClient,
    closed_loop,
    pct,
    ratio,
    register_empty_document,
    server_pid,
    service_env,
    settings_of,
    start_api,
    start_fake_openai,
    start_worker,
)
from core.protocol import EventKind
from tests.servers import Proc

INFLIGHT = 64


def _windows(ctx: Context) -> tuple[float, float]:
    return (0.3, 1.0) if ctx.quick else (1.0, 5.0)


async def streams_load(ctx: Context, env: dict[str, str], inflight: int, cpu_of: dict[str, int]) -> Load:
    """(a) Submit with JobQueue.submit (as the API does), read the job's event stream until ``done``."""
    warmup, measure = _windows(ctx)
    client = StreamClient(settings_of(env))
    try:
        async def one() -> None:
            job_id = await client.submit("What is nothing?")
            events = await client.until(job_id)
            if events[-1][0] != EventKind.DONE:
                raise RuntimeError(f"job failed: {events[-1]}")

        return await closed_loop(one, inflight=inflight, warmup_s=warmup, measure_s=measure, cpu_of=cpu_of)
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


async def http_load(url: str, ctx: Context, inflight: int, cpu_of: dict[str, int] | None = None) -> Load:
    """(b) POST /v1/ask and read the SSE stream to its end; one keep-alive connection per caller."""
    host, _, port = url.removeprefix("http://").partition(":")
    body = b'{"question": "What is nothing?"}'
    request = (f"POST /v1/ask HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
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
            raise RuntimeError(f"/v1/ask did not end with done: {reply[-300:]!r}")
        idle.append(conn)

    try:
        return await closed_loop(ask, inflight=inflight, warmup_s=warmup, measure_s=measure, cpu_of=cpu_of)
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
    await register_empty_document(settings_of(env))
    # The fake embedder is left out: it stands for work the service would do anyway.
    cpu_of = {"worker": worker.proc.pid, "Valkey": await server_pid(ctx.redis_url), "load generator": os.getpid()}
    streams = await streams_load(ctx, env, inflight, cpu_of)
    sse = None
    if http:
        api, url = start_api(ctx, env, work / "api.log")
        sse = await http_load(url, ctx, inflight, {"API": api.proc.pid, **cpu_of})
        api.stop()
    worker.stop()
    return streams, sse


def rq(ctx: Context) -> Load:
    """RQ 2+/3 with its default forking worker; results fetched with job.latest_result(timeout=...)."""
    import redis
    from rq import Queue
    from rq import Worker as RqWorker

    work = ctx.dir("rq")
    name = ctx.prefix("rq")
    worker = Proc([sys.executable, "-m", "rq.cli", "worker", "--url", ctx.redis_url, name], {}, work / "rq.log")
    ctx.stack.callback(worker.stop)
    conn = redis.Redis.from_url(ctx.redis_url, max_connections=INFLIGHT * 2)
    queue = Queue(name, connection=conn)
    deadline = time.monotonic() + 30
    while not any(name in w.queue_names() for w in RqWorker.all(connection=conn)):
        if worker.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"rq worker did not start: {worker.output()[-2000:]}")
        time.sleep(0.05)
    from bench.baselines import noop

    warmup, measure = _windows(ctx)
    start = time.perf_counter()
    window_start, window_end = start + warmup, start + warmup + measure
    latencies: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        while time.perf_counter() < window_end:
            t0 = time.perf_counter()
            job = queue.enqueue(noop)
            result = job.latest_result(timeout=60)
            t1 = time.perf_counter()
            if result is None or result.return_value != 1:
                raise RuntimeError(f"rq job {job.id} has no result")
            if window_start <= t0 and t1 <= window_end:
                with lock:
                    latencies.append(t1 - t0)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(INFLIGHT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(warmup + measure + 60)
    conn.close()
    return Load(len(latencies), measure, latencies)


async def arq(ctx: Context, *, worker_poll: float, max_jobs: int, result_poll: float) -> Load:
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
                raise RuntimeError(f"arq worker did not start: {worker.output()[-2000:]}")
            await asyncio.sleep(0.05)

        async def one() -> None:
            job = await pool.enqueue_job("noop", _job_id=uuid.uuid4().hex)
            assert job is not None
            if await job.result(timeout=60, poll_delay=result_poll) != 1:
                raise RuntimeError("arq job returned the wrong result")

        warmup, measure = _windows(ctx)
        cpu_of = {"worker": worker.proc.pid, "Valkey": await server_pid(ctx.redis_url), "load generator": os.getpid()}
        return await closed_loop(one, inflight=INFLIGHT, warmup_s=warmup, measure_s=measure, cpu_of=cpu_of)
    finally:
        await pool.aclose()


#: Our worker sized for 64 in flight, as ARQ tuned gets max_jobs 64: the defaults (8 answers
#: at once per consumer, batches of 16) are sized for a local LLM, not for no-op jobs.
SIZED = {"worker_max_generations": str(INFLIGHT), "worker_batch_size": str(INFLIGHT)}


async def run(ctx: Context) -> list[Row]:
    streams, sse = await ours(ctx, overrides=SIZED)
    assert sse is not None
    streams_default, _ = await ours(ctx, http=False)
    lone_default, _ = await ours(ctx, inflight=1, http=False)
    lone_nowait, _ = await ours(ctx, inflight=1, http=False, overrides={"worker_batch_wait_ms": "0"})
    rq_load = await asyncio.to_thread(rq, ctx)
    arq_tuned = await arq(ctx, worker_poll=0.005, max_jobs=INFLIGHT, result_poll=0.005)
    arq_default = await arq(ctx, worker_poll=0.5, max_jobs=10, result_poll=0.5)
    tuned = "ARQ tuned (worker poll 5 ms, max_jobs 64, result poll 5 ms)"
    sized = "max_generations and batch_size 64"
    what = f"no-op jobs, {INFLIGHT} in flight"
    pairs = [
        (f"(a) Redis Streams ({sized}) vs {tuned}", streams, arq_tuned),
        ("(a) Redis Streams (default settings) vs ARQ defaults (poll 0.5 s, max_jobs 10)", streams_default,
         arq_default),
        (f"(a) Redis Streams ({sized}) vs RQ (forking worker, latest_result)", streams, rq_load),
        (f"(b) HTTP API + SSE ({sized}) vs {tuned}", sse, arq_tuned),
        (f"(b) HTTP API + SSE ({sized}) vs RQ", sse, rq_load),
    ]
    rows = [Row(bench="queue", measure=f"{label}: {what}", ours=load.summary(), baseline=base.summary(),
                ratio=f"{ratio(load.rate, base.rate)} jobs/s, "
                      f"{ratio(pct(load.latencies, 50), pct(base.latencies, 50), lower_is_better=True)} p50")
            for label, load, base in pairs]
    rows += [Row(bench="queue", measure=f"{label}: CPU per job by process, in the measuring window (the fake "
                 "embedder left out)", ours=load.cpu_per_job(), baseline=arq_tuned.cpu_per_job(),
                 ratio=ratio(sum(load.cpu.values()) / max(load.done, 1),
                             sum(arq_tuned.cpu.values()) / max(arq_tuned.done, 1), lower_is_better=True)
                 + " CPU per job")
             for label, load in [(f"(a) Redis Streams ({sized}) vs {tuned}", streams),
                                 (f"(b) HTTP API + SSE ({sized}) vs {tuned}", sse)]]
    rows.append(Row(
        bench="queue", measure="(a) one job in flight: default RAG_WORKER_BATCH_WAIT_MS=5 vs 0",
        ours=lone_default.summary(), baseline=lone_nowait.summary(),
        ratio=f"{ratio(pct(lone_default.latencies, 50), pct(lone_nowait.latencies, 50), lower_is_better=True)} p50",
    ))
    return rows
