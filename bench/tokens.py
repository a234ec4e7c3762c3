"""Token relay: a fake LLM streams as fast as it can; tokens/s and per-token latency at SSE clients vs the raw LLM stream.

tokens/s counts from the first token received to the last, over all concurrent clients.
A paced case (5 ms a token, about a real small LLM's speed) shows the relay's own
latency without the backlog that a flat-out producer builds in every buffer.

Each fake token is the wall-clock time it was sent (`` t<ns>``), so the client measures
every token's latency through the whole relay: LLM stream -> worker (coalescing, every
RAG_WORKER_TOKEN_FLUSH_MS) -> Redis event stream -> API -> SSE. The baseline reads the
same fake LLM's stream directly with the openai client, in the same run. A one-page document
is indexed first, so that the question is found and goes to the LLM (a question with no
sources ends without one). Every stream, relayed or direct, must bring all its tokens.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AsyncExitStack

import httpx
from openai import AsyncOpenAI

from bench.harness import (
    BenchmarkError,
    Context,
    Row,
    index_pdfs,
    pct,
    ratio,
    service_env,
    start_api,
    start_fake_openai,
    start_worker,
)
from core.protocol import EventKind
from tests.pdfs import FACTS, write_pdf

#: Asked of the indexed page (FACTS[1]): found, so the LLM answers it.
QUESTION = "What does the Zephyr turbine do?"


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

    def complete(self, what: str, expected: int) -> Stream:
        """This stream, if it brought every token the fake LLM sent; else BenchmarkError."""
        if self.tokens != expected:
            raise BenchmarkError(f"{what} brought {self.tokens} of the {expected} tokens sent")
        return self


async def direct(base_url: str, max_tokens: int) -> Stream:
    out = Stream()
    async with AsyncOpenAI(base_url=base_url, api_key="unused") as client:
        response = await client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": "go"}], max_tokens=2 * max_tokens, stream=True)
        async for chunk in response:
            for choice in chunk.choices:
                if choice.delta.content:
                    out.tokens_in(choice.delta.content)
    return out.complete("the LLM stream read directly", max_tokens)


async def relayed(http: httpx.AsyncClient, max_tokens: int) -> Stream:
    out = Stream()
    event = ""
    async with http.stream("POST", "/v1/ask", json={"question": QUESTION}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == EventKind.TOKEN:
                out.tokens_in(json.loads(line[6:])["text"])
            elif line.startswith("data: ") and event in (EventKind.ERROR, EventKind.CANCELLED):
                raise BenchmarkError(f"/v1/ask ended with {event}: {line[6:300]}")
    if event != EventKind.DONE:
        raise BenchmarkError(f"/v1/ask ended without done (last event {event!r})")
    return out.complete("the relayed stream (/v1/ask)", max_tokens)


def summary(streams: list[Stream]) -> tuple[float, list[float], str]:
    """Tokens/s from the first token to the last (the wait for retrieval is not relay time)."""
    tokens = sum(s.tokens for s in streams)
    wall = max(s.last for s in streams) - min(s.first for s in streams)
    latencies = [x for s in streams for x in s.latencies]
    rate = tokens / wall
    events = sum(s.events for s in streams)
    text = (f"{rate:,.0f} tokens/s, latency p50 {pct(latencies, 50) * 1000:.1f} ms, "
            f"p99 {pct(latencies, 99) * 1000:.1f} ms ({tokens} tokens in {events} events)")
    return rate, latencies, text


async def relay_case(ctx: Context, fake: str, max_tokens: int, clients: int, label: str) -> Row:
    work = ctx.dir("tokens")
    # The fake ends each answer itself after max_tokens tokens, within the worker's limit (twice as many),
    # as a model ends an answer: one cut at the limit would lose its unfinished last sentence.
    fake = fake.replace("/v1", f"/tokens/{max_tokens}/v1")
    env = service_env(ctx.redis_url, ctx.prefix("tokens"), work / "data", embedder_backend="openai",
                      embedder_base_url=fake, llm_backend="openai", llm_base_url=fake,
                      llm_max_tokens=str(2 * max_tokens))
    worker = start_worker(ctx, env, work / "worker.log")
    await index_pdfs(env, [write_pdf(work / "facts.pdf", {1: FACTS[1]})])
    api, url = start_api(ctx, env, work / "api.log")
    await direct(fake, max_tokens)  # warm up both paths
    async with httpx.AsyncClient(base_url=url, timeout=120) as warm:
        await relayed(warm, max_tokens)
    base = await asyncio.gather(*(direct(fake, max_tokens) for _ in range(clients)))
    base_rate, _, base_text = summary(list(base))
    async with AsyncExitStack() as stack:
        https = [await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=120))
                 for _ in range(clients)]
        ours = await asyncio.gather(*(relayed(h, max_tokens) for h in https))
        rate, _, text = summary(list(ours))
    api.stop()
    worker.stop()
    return Row(bench="tokens", measure=f"{clients} SSE client(s), {max_tokens} tokens each, {label}: relay vs the "
               "LLM stream read directly", ours=text, baseline=base_text, ratio=f"{ratio(rate, base_rate)} tokens/s")


async def run(ctx: Context) -> list[Row]:
    max_tokens = 200 if ctx.smoke else 500 if ctx.quick else 2000
    work = ctx.dir("tokens")
    fake = start_fake_openai(ctx, work / "fake.log")
    paced = fake.replace("/v1", "/pace/5/v1")
    rows = [await relay_case(ctx, fake, max_tokens, 8, "fake LLM flat out")]
    if not ctx.smoke:
        rows.insert(0, await relay_case(ctx, fake, max_tokens, 1, "fake LLM flat out"))
        rows.append(await relay_case(ctx, paced, 100 if ctx.quick else 400, 1, "fake LLM paced at 5 ms a token"))
    return rows
