"""SSE fan-out: N open event streams on one API process; its memory per stream, Redis connections, delivery latency.

No worker runs, so every job stays queued and its stream stays open (blocked in XREAD).
The clients are raw asyncio sockets (an HTTP/1.1 GET each), so that the client side
stays light. Then one ``done`` event is written to every job (EventWriter.emit) and
the time until each stream delivers it is measured.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from bench.harness import Context, Row, StreamClient, pct, rss_kib, service_env, settings_of, start_api
from core.protocol import Done

#: Deliveries to a lone stream, one after another: the baseline of the fan-out's delivery time.
ALONE = 20


async def _open(host: str, port: int, job_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /v1/queries/{job_id}/events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
                 .encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"stream refused: {head[:100]!r}")
    return reader, writer


async def _wait_done(reader: asyncio.StreamReader) -> float:
    await reader.readuntil(b"event: done")
    return time.perf_counter()


async def _deliver_alone(client: StreamClient, host: str, port: int) -> float:
    """Seconds from writing a `done` to its delivery on the one open stream."""
    job_id = await client.submit("alone")
    reader, writer = await _open(host, port, job_id)
    sent = time.perf_counter()
    await client.events.emit(job_id, Done(answer="ok"))
    arrived = await asyncio.wait_for(_wait_done(reader), 30)
    writer.close()
    return arrived - sent


async def _clients(redis: aioredis.Redis) -> int:
    return len(await redis.client_list())


async def run(ctx: Context) -> list[Row]:
    n = 100 if ctx.smoke else 200 if ctx.quick else 5000  # the target: 5,000 streams on one API process
    work = ctx.dir("fanout")
    env = service_env(ctx.redis_url, ctx.prefix("fanout"), work / "data")
    api, url = start_api(ctx, env, work / "api.log")
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    client = StreamClient(settings_of(env), max_connections=64)
    admin = aioredis.Redis.from_url(ctx.redis_url)
    try:
        job_ids = [await client.submit(f"fan-out question {i}") for i in range(n)]
        # One stream at a time first: the app's lazily imported code paths warm, and the baseline of the
        # delivery time, a `done` reaching the only open stream.
        alone = [await _deliver_alone(client, host, port) for _ in range(ALONE)]
        await asyncio.sleep(0.5)
        rss0, conns0 = rss_kib(api.proc.pid), await _clients(admin)
        t0 = time.perf_counter()
        streams = await asyncio.gather(*(_open(host, port, j) for j in job_ids))
        opened_s = time.perf_counter() - t0
        await asyncio.sleep(1.0)
        rss1, conns1 = rss_kib(api.proc.pid), await _clients(admin)
        waits = [asyncio.create_task(_wait_done(r)) for r, _ in streams]
        sent = time.perf_counter()
        await asyncio.gather(*(client.events.emit(j, Done(answer="ok")) for j in job_ids))
        arrived = await asyncio.wait_for(asyncio.gather(*waits), 60)
        latencies = [t - sent for t in arrived]
        for _, w in streams:
            w.close()
    finally:
        await admin.aclose()
        await client.aclose()
    per_stream = (rss1 - rss0) / n
    return [
        Row(bench="fanout", measure=f"{n} open SSE streams on one API process: its RSS", ours=f"{rss1 / 1024:,.0f} MiB "
            f"({per_stream:,.1f} KiB per stream; all open in {opened_s:.1f} s)",
            baseline=f"{rss0 / 1024:,.0f} MiB with no stream open", ratio=f"+{(rss1 - rss0) / 1024:,.0f} MiB"),
        Row(bench="fanout", measure=f"{n} open SSE streams: Redis connections (CLIENT LIST)", ours=f"{conns1:,}",
            baseline=f"{conns0:,} with no stream open",
            ratio=f"+{conns1 - conns0:,} ({(conns1 - conns0) / n:.2f} per stream)"),
        Row(bench="fanout", measure=f"a `done` event written to each of {n} jobs at once: until its stream delivers it",
            ours=f"p50 {pct(latencies, 50) * 1000:.0f} ms, p99 {pct(latencies, 99) * 1000:.0f} ms, "
                 f"all in {max(latencies) * 1000:.0f} ms",
            baseline=f"one stream open: p50 {pct(alone, 50) * 1000:.1f} ms, p99 {pct(alone, 99) * 1000:.1f} ms "
                     f"({ALONE} in turn)",
            ratio=f"p50 {pct(latencies, 50) / pct(alone, 50):,.0f} times the lone stream's"),
    ]
