"""The query path: the API under uvicorn (in a thread) -> Redis -> a Worker in the test's loop -> SSE."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from app.main import create_app
from core.hub import EventHub
from core.keys import Keys
from core.protocol import EMPTY_COLLECTION, NOT_FOUND_ANSWER, Done, Embed, Embeddings, Query, decode_vector, new_job
from core.queue import JobQueue
from core.redis import connect
from ingest.producer import Producer
from tests.conftest import make_settings
from tests.pdfs import FACTS, write_pdf
from tests.servers import ThreadedUvicorn
from tests.sse import parse_sse
from tests.workers_inproc import running_worker

LONG_FACTS = {page: text * 2 for page, text in FACTS.items()}


@asynccontextmanager
async def api_client(settings) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    # The API runs on its own loop in a thread: a test client that blocks this loop would
    # starve the worker that shares it.
    with ThreadedUvicorn(create_app(settings)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            yield client


async def ingest(settings, path: Path) -> None:  # type: ignore[no-untyped-def]
    redis = connect(settings.redis)
    try:
        results = await asyncio.wait_for(Producer(redis, settings).run([path], lambda *_: None), 60)
    finally:
        await redis.aclose()
    assert [r.status for r in results] == ["sent"]


@pytest.fixture
def settings(redis_url: str, prefix: str, tmp_path: Path, fake_llm: str):  # type: ignore[no-untyped-def]
    return make_settings(redis_url, prefix, tmp_path / "data", llm_backend="openai", llm_base_url=fake_llm,
                         ingest_chunk_words="40", ingest_overlap_words="5", worker_batch_wait_ms="50")


async def test_ask_streams_sources_tokens_done(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pdf = write_pdf(tmp_path / "facts.pdf", LONG_FACTS)
    async with running_worker(settings):
        await ingest(settings, pdf)
        async with api_client(settings) as client:
            response = await client.post("/v1/ask", json={"question": "How does kelp photosynthesis store energy?"})
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            events = parse_sse(response.text)
    kinds = [e.event for e in events]
    assert kinds[0] == "sources" and kinds[-1] == "done" and set(kinds[1:-1]) == {"token"}
    top = events[0].data["sources"][0]
    assert top["file"] == "facts.pdf" and top["page"] <= 2 <= top["page_end"]
    assert "kelp" in top["snippet"]
    answer = "".join(e.data["text"] for e in events if e.event == "token")
    done = events[-1].data
    assert answer == done["answer"] and "kelp" in answer.lower()  # the fake LLM quotes source [1]
    assert done["citations"][0]["n"] == 1
    assert all(e.id for e in events)


async def test_job_resource_status_and_resume(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pdf = write_pdf(tmp_path / "facts.pdf", LONG_FACTS)
    async with running_worker(settings):
        await ingest(settings, pdf)
        async with api_client(settings) as client:
            accepted = await client.post("/v1/queries", json={"question": "Which compiler targets WebAssembly?"})
            assert accepted.status_code == 202
            body = accepted.json()
            job_id = body["id"]
            assert body["links"]["events"] == f"/v1/queries/{job_id}/events"
            assert accepted.headers["location"] == f"/v1/queries/{job_id}"
            full = parse_sse((await client.get(body["links"]["events"])).text)
            assert full[-1].event == "done"
            # Resume after each event: exactly the remaining ones, nothing repeated.
            for i, event in enumerate(full):
                rest = parse_sse((await client.get(body["links"]["events"],
                                                   headers={"Last-Event-ID": event.id})).text)
                assert [e.id for e in rest] == [e.id for e in full[i + 1:]]
            status = (await client.get(f"/v1/queries/{job_id}")).json()
            assert status["status"] == "done" and status["answer"] == full[-1].data["answer"]
            assert status["question"] == "Which compiler targets WebAssembly?"


async def test_concurrent_queries_share_embed_calls(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pdf = write_pdf(tmp_path / "facts.pdf", LONG_FACTS)
    n = 12
    async with running_worker(settings):
        await ingest(settings, pdf)
        redis = Redis.from_url(settings.redis.url)
        keys = Keys(settings.redis.prefix)
        before = await redis.hgetall(keys.metrics)
        async with api_client(settings) as client:
            responses = await asyncio.gather(
                *(client.post("/v1/ask", json={"question": f"question {i} about marmalade oranges"}) for i in range(n))
            )
        after = await redis.hgetall(keys.metrics)
        await redis.aclose()
    dones = [parse_sse(r.text)[-1] for r in responses]
    assert all(d.event == "done" for d in dones)
    calls = int(after[b"query_embed_calls"]) - int(before.get(b"query_embed_calls", 0))
    embedded = int(after[b"queries_embedded"]) - int(before.get(b"queries_embedded", 0))
    assert embedded == n
    assert calls < n, f"{n} concurrent queries took {calls} embed calls: no batching"
    assert max(d.data["timings"]["batch_size"] for d in dones) > 1


async def test_a_query_to_an_idle_worker_is_not_held_for_the_batch_wait(
        redis_url: str, prefix: str, tmp_path: Path, fake_llm: str) -> None:
    # A 30 s batch wait: a lone question held for it would time out below (it failed so before the fix).
    settings = make_settings(redis_url, prefix, tmp_path / "data", llm_backend="openai", llm_base_url=fake_llm,
                             ingest_chunk_words="40", ingest_overlap_words="5", worker_batch_wait_ms="30000")
    async with running_worker(settings):
        await ingest(settings, write_pdf(tmp_path / "facts.pdf", LONG_FACTS))
        async with api_client(settings) as client:
            for question in ("How does kelp store energy?", "Where do bitter oranges grow?"):
                response = await asyncio.wait_for(client.post("/v1/ask", json={"question": question}), 10)
                assert parse_sse(response.text)[-1].event == "done"


async def test_extractive_answers_cite_their_sentences_and_say_what_they_cannot(  # type: ignore[no-untyped-def]
        redis_url: str, prefix: str, tmp_path: Path) -> None:
    settings = make_settings(redis_url, prefix, tmp_path / "data", llm_backend="extractive",
                             ingest_chunk_words="40", ingest_overlap_words="5")
    async with running_worker(settings):
        await ingest(settings, write_pdf(tmp_path / "facts.pdf", FACTS))
        async with api_client(settings) as client:
            answered = parse_sse((await client.post("/v1/ask", json={
                "question": "What does the Helios compiler translate Pascal programs into?"})).text)
            unknown = parse_sse((await client.post("/v1/ask", json={
                "question": "What was the Bank of England base rate yesterday?"})).text)
            empty = parse_sse((await client.post("/v1/ask", json={
                "question": "What does the Helios compiler do?", "collection": "nothing-here"})).text)
    done = answered[-1].data
    n = done["citations"][0]["n"]
    # The sentence that answers, once (the page repeats it), cited; not the whole chunk.
    assert done["answer"] == f"The Helios compiler translates Pascal programs into WebAssembly modules in a single pass. [{n}]"
    assert [c["page"] for c in done["citations"]] == [3] and done["found"] and done["supported"]
    assert "".join(e.data["text"] for e in answered if e.event == "token") == done["answer"]
    done = unknown[-1].data
    assert (done["answer"], done["found"], done["citations"]) == (NOT_FOUND_ANSWER, False, [])
    assert unknown[0].event == "sources"  # what was retrieved is still shown
    assert [e.event for e in empty] == ["sources", "error"] and empty[0].data["sources"] == []
    assert empty[1].data["code"] == EMPTY_COLLECTION and "nothing-here" in empty[1].data["message"]


async def test_embedding_jobs_share_the_batch_embed_call_with_questions(settings) -> None:  # type: ignore[no-untyped-def]
    redis = connect(settings.redis)
    keys = Keys(settings.redis.prefix)
    queue = JobQueue(redis, keys, settings.limits)
    embed, query = new_job(Embed(texts=["tidal power", "kelp"])), new_job(Query(question="What about tides?"))
    for job in (embed, query):  # both wait before the worker starts: they are read in one batch
        await queue.submit(job, keys.queries, {})
    try:
        async with running_worker(settings) as worker:
            hub = EventHub(redis, Redis(connection_pool=redis.connection_pool, single_connection_client=True))
            await hub.start()
            try:
                events = [e.event() async for e in hub.follow(keys.events(embed.id))]
            finally:
                await hub.stop()
    finally:
        await redis.aclose()
    assert worker.metrics is not None  # counted once the worker has stopped: every ack is in
    assert worker.metrics.local["query_embed_calls"] == 1 and worker.metrics.local["lookups"] == 1
    vectors, done = events
    assert isinstance(vectors, Embeddings) and isinstance(done, Done) and vectors.dim == 384
    assert [len(decode_vector(v)) for v in vectors.vectors] == [384, 384] and done.usage.prompt_tokens == 3
