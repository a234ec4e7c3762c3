"""An LLM that fails: retried with backoff only before the first token, never on a bad request.

The fake LLM (tests/fake_openai.py) answers 5xx, stalls or breaks off mid-stream as its plan says,
and counts every request it gets: the attempts are counted, not guessed from the events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from core.keys import Keys
from tests.conftest import make_settings
from tests.integration.test_query_path import api_client, ingest
from tests.pdfs import FACTS, write_pdf
from tests.servers import free_port
from tests.sse import SSE, parse_sse
from tests.workers_inproc import running_worker

QUESTION = "What does the Zephyr turbine do?"  # it has sources: the LLM is asked


def llm_settings(redis_url: str, prefix: str, tmp_path: Path, base_url: str, **overrides: str):  # type: ignore[no-untyped-def]
    return make_settings(redis_url, prefix, tmp_path / "data", **{
        "llm_backend": "openai", "llm_base_url": base_url, "llm_timeout_s": "2", "worker_max_deliveries": "3",
        **overrides})


@asynccontextmanager
async def answering(redis_url: str, prefix: str, tmp_path: Path, base_url: str,
                    **overrides: str) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """A worker and the API on the LLM at ``base_url``, a PDF indexed: yields (settings, an API client)."""
    settings = llm_settings(redis_url, prefix, tmp_path, base_url, **overrides)
    async with running_worker(settings), api_client(settings) as client:
        await ingest(settings, write_pdf(tmp_path / "facts.pdf", FACTS))
        yield settings, client


async def ask(client: httpx.AsyncClient, question: str = QUESTION) -> list[SSE]:
    return parse_sse((await client.post("/v1/ask", json={"question": question})).text)


async def dead_letters(settings: Any) -> list[dict[bytes, bytes]]:
    redis = Redis.from_url(settings.redis.url)
    try:
        return [fields for _, fields in await redis.xrange(Keys(settings.redis.prefix).dead)]
    finally:
        await redis.aclose()


async def test_a_5xx_or_a_timeout_before_the_first_token_is_retried_with_backoff(
        llm_app, redis_url: str, prefix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    llm, base_url = llm_app
    async with answering(redis_url, prefix, tmp_path, base_url) as (settings, client):
        # Attempt 1: 503 and the openai client's own two retries; attempt 2, after our backoff: 500, then an answer.
        llm.state.plan, llm.state.requests = ["503", "503", "503", "500"], []
        events = await ask(client)
        assert [e.event for e in events if e.event != "token"] == ["sources", "done"]
        assert "".join(e.data["text"] for e in events if e.event == "token") == events[-1].data["answer"]
        times = [t for t, _ in llm.state.requests]
        assert len(times) == 5
        assert times[3] - times[2] >= 0.9, "no backoff between our attempts"
        # A request that times out (2 s) is retried too.
        llm.state.plan, llm.state.requests = ["stall"], []
        events = await ask(client)
        assert [e.event for e in events if e.event != "token"] == ["sources", "done"]
        assert len(llm.state.requests) == 2
    assert await dead_letters(settings) == []


async def test_a_failure_after_the_first_token_or_a_bad_request_is_never_retried(
        llm_app, redis_url: str, prefix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    llm, base_url = llm_app
    async with answering(redis_url, prefix, tmp_path, base_url) as (settings, client):
        for plan in ("drop@3", "stall@3"):  # the connection breaks; the LLM goes silent past the timeout
            llm.state.plan, llm.state.requests = [plan], []
            events = await ask(client)
            assert [e.event for e in events if e.event != "token"] == ["sources", "error"], plan
            streamed = "".join(e.data["text"] for e in events if e.event == "token")
            assert streamed and "According to the".startswith(streamed), plan  # the first token, at least
            assert events[-1].data["code"] == "llm_unavailable"
            assert len(llm.state.requests) == 1, f"{plan}: retried after the first token"
        llm.state.requests = []
        events = await ask(client, f"{QUESTION} FAIL_PERMANENT")
        assert [e.event for e in events] == ["sources", "error"]
        assert events[-1].data["code"] == "llm_bad_request"
        assert len(llm.state.requests) == 1, "a bad request was retried"
    dead = await dead_letters(settings)
    assert [(f[b"code"], f[b"deliveries"]) for f in dead] == [(b"llm_unavailable", b"1")] * 2 + [
        (b"llm_bad_request", b"1")]


async def test_an_llm_down_for_good_fails_the_job_after_every_attempt(
        llm_app, redis_url: str, prefix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    llm, base_url = llm_app
    async with answering(redis_url, prefix, tmp_path, base_url, worker_max_deliveries="2") as (settings, client):
        llm.state.plan, llm.state.requests = ["503"] * 12, []  # two jobs
        events = await ask(client)
        assert [e.event for e in events] == ["sources", "error"]
        assert events[-1].data["code"] == "llm_unavailable"
        assert len(llm.state.requests) == 2 * 3  # max_deliveries attempts of three requests each
        job_id = (await client.post("/v1/queries", json={"question": "What does Helios compile?"})).json()["id"]
        for _ in range(200):
            status = (await client.get(f"/v1/queries/{job_id}")).json()
            if status["status"] == "failed":
                break
            await asyncio.sleep(0.05)
        assert status["status"] == "failed" and status["error"]["code"] == "llm_unavailable"
    assert [f[b"code"] for f in await dead_letters(settings)] == [b"llm_unavailable"] * 2


async def test_an_llm_that_refuses_connections_is_unavailable(redis_url: str, prefix: str, tmp_path: Path) -> None:
    refused = f"http://127.0.0.1:{free_port()}/v1"
    async with answering(redis_url, prefix, tmp_path, refused, worker_max_deliveries="1") as (settings, client):
        events = await ask(client)
    assert [e.event for e in events] == ["sources", "error"]
    assert events[-1].data["code"] == "llm_unavailable"
    assert [f[b"code"] for f in await dead_letters(settings)] == [b"llm_unavailable"]
