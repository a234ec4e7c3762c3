"""What API keys cost: ``/v1/ask`` at 64 in flight through a key (its lookup and token bucket, one Lua script a
request, no cache) against the same API with RAG_API_AUTH=off (no lookup at all, as before keys), and a
loopback API with no key yet (one lookup a request: does any key exist?).

One worker (the queue benchmark's: instant fake embedder, extractive answers, sized for 64 in flight) and one
API process per side, measured one after the other on the same worker.
"""

from __future__ import annotations

import os

from bench.harness import (
    LOAD_GENERATOR,
    Context,
    Load,
    Row,
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
from bench.queue import INFLIGHT, SIZED, http_load
from core.apikeys import ApiKeys
from core.keys import Keys
from core.redis import connect
from tests.pdfs import FACTS, write_pdf


def api_cpu(load: Load) -> float:
    return load.cpu["API"] / load.done


def compare(label: str, load: Load, base: Load) -> list[Row]:
    return [
        Row(bench="auth", measure=f"{label}, /v1/ask, {INFLIGHT} in flight", ours=load.summary(),
            baseline=base.summary(), ratio=f"{ratio(load.rate, base.rate)} jobs/s, "
            f"{ratio(pct(load.latencies, 50), pct(base.latencies, 50), lower_is_better=True)} p50"),
        Row(bench="auth", measure=f"{label}: the API process's CPU per question",
            ours=f"{api_cpu(load) * 1e6:,.0f} µs", baseline=f"{api_cpu(base) * 1e6:,.0f} µs",
            ratio=f"{ratio(api_cpu(load), api_cpu(base), lower_is_better=True)} CPU per question"),
    ]


async def run(ctx: Context) -> list[Row]:
    work = ctx.dir("auth")
    fake = start_fake_openai(ctx, work / "fake.log")
    prefix = ctx.prefix("auth")
    env = service_env(ctx.redis_url, prefix, work / "data", embedder_backend="openai", embedder_base_url=fake,
                      **SIZED)
    worker = start_worker(ctx, env, work / "worker.log")
    await index_pdfs(env, [write_pdf(work / "facts.pdf", {1: FACTS[1]})])
    cpu_of = {"worker": worker.proc.pid, "Valkey": await server_pid(ctx.redis_url), LOAD_GENERATOR: os.getpid()}

    async def load(what: str, overrides: dict[str, str], api_key: str | None = None) -> Load:
        api, url = start_api(ctx, {**env, **overrides}, work / f"api-{len(overrides)}-{bool(api_key)}.log")
        try:
            return await http_load(url, ctx, INFLIGHT, {"API": api.proc.pid, **cpu_of}, what, api_key=api_key)
        finally:
            api.stop()

    off = await load("RAG_API_AUTH=off", {"RAG_API_AUTH": "off"})
    open_ = await load("no key yet, on loopback", {})
    settings = settings_of(env)
    redis = connect(settings.redis)
    try:  # a limit far above the load: its bucket is counted on every request, and never refuses one
        _, key = await ApiKeys(redis, Keys(prefix), settings.limits).create("bench", ["default"], rps=1e9,
                                                                           burst=10**9)
    finally:
        await redis.aclose()
    keyed = await load("an API key", {}, api_key=key)
    return [*compare("an API key (lookup and token bucket, one Lua script) vs RAG_API_AUTH=off", keyed, off),
            *compare("no key yet, on loopback (one lookup: does any key exist?) vs RAG_API_AUTH=off", open_, off)]
