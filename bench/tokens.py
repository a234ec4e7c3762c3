"""Token relay: a fake LLM streams as fast as it can; tokens/s and per-token latency at SSE clients vs the raw LLM stream.

tokens/s counts from the first token received to the last, over all concurrent clients.
A paced case (5 ms a token, about a real small LLM's speed) shows the relay's own
latency without the backlog that a flat-out producer builds in every buffer.

Each fake token is the wall-clock time it was sent (`` t<ns>``), so the client measures
every token's latency through the whole relay: LLM stream -> worker (coalescing, every
RAG_WORKER_TOKEN_FLUSH_MS) -> Redis event stream -> API -> SSE. The baseline reads the
same fake LLM's stream directly with the openai client, in the same run.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AsyncExitStack

import httpx
from openai import AsyncOpenAI

from bench.harness import Context, Row, pct, ratio, service_env, start_api, start_fake_openai, start_worker


class Stream:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.tokens = 0
        self.events = 0
        self.first = 0.0
        self.last = 0.0

    def tokens_in(self, text: str) -> None:
        now = time.time_ns()
        for word in text.split():
            if word.startswith("t") and word[1:].isdigit():
                self.latencies.append((now - int(word[1:])) / 1e9)
                self.tokens += 1
        self.events += 1
        self.last = time.perf_counter()
        self.first = self.first or self.last


async def direct(base_url: str, max_tokens: int) -> Stream:
    out = Stream()
    async with AsyncOpenAI(base_url=base_url, api_key="unused") as client:
        response = await client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": "go"}], max_tokens=max_tokens, stream=True)
        async for chunk in response:
            for choice in chunk.choices:
                if choice.delta.content:
                    out.tokens_in(choice.delta.content)
    return out


async def relayed(http: httpx.AsyncClient) -> Stream:
    out = Stream()
    event = ""
    async with http.stream("POST", "/v1/ask", json={"question": "Stream as fast as you can"}) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "token":
                out.tokens_in(json.loads(line[6:])["text"])
    return out


def summary(streams: list[Stream], wall: float) -> tuple[float, list[float], str]:
    """Tokens/s from the first token to the last (the wait for retrieval is not relay time)."""
    tokens = sum(s.tokens for s in streams)
    wall = max(s.last for s in streams) - min(s.first for s in streams)
    latencies = [x for s in streams for x in s.latencies]
    rate = tokens / wall if wall else 0.0
    events = sum(s.events for s in streams)
    text = (f"{rate:,.0f} tokens/s, latency p50 {pct(latencies, 50) * 1000:.1f} ms, "
            f"p99 {pct(latencies, 99) * 1000:.1f} ms ({tokens} tokens in {events} events)")
    return rate, latencies, text


async def relay_case(ctx: Context, fake: str, max_tokens: int, clients: int, label: str) -> Row:
    work = ctx.dir("tokens")
    env = service_env(ctx.redis_url, ctx.prefix("tokens"), work / "data", embedder_backend="openai",
                      embedder_base_url=fake, llm_backend="openai", llm_base_url=fake,
                      llm_max_tokens=str(max_tokens))
    worker = start_worker(ctx, env, work / "worker.log")
    api, url = start_api(ctx, env, work / "api.log")
    await direct(fake, 10)  # warm up both paths
    async with httpx.AsyncClient(base_url=url, timeout=120) as warm:
        await relayed(warm)
    t0 = time.perf_counter()
    base = await asyncio.gather(*(direct(fake, max_tokens) for _ in range(clients)))
    base_rate, _, base_text = summary(list(base), time.perf_counter() - t0)
    async with AsyncExitStack() as stack:
        https = [await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=120))
                 for _ in range(clients)]
        t0 = time.perf_counter()
        ours = await asyncio.gather(*(relayed(h) for h in https))
        rate, _, text = summary(list(ours), time.perf_counter() - t0)
    api.stop()
    worker.stop()
    return Row(bench="tokens", measure=f"{clients} SSE client(s), {max_tokens} tokens each, {label}: relay vs the "
               "LLM stream read directly", ours=text, baseline=base_text, ratio=f"{ratio(rate, base_rate)} tokens/s")


async def run(ctx: Context) -> list[Row]:
    max_tokens = 500 if ctx.quick else 2000
    work = ctx.dir("tokens")
    fake = start_fake_openai(ctx, work / "fake.log")
    paced = fake.replace("/v1", "/pace/5/v1")
    return [
        await relay_case(ctx, fake, max_tokens, 1, "fake LLM flat out"),
        await relay_case(ctx, fake, max_tokens, 8, "fake LLM flat out"),
        await relay_case(ctx, paced, 100 if ctx.quick else 400, 1, "fake LLM paced at 5 ms a token"),
    ]
