"""Jobs whose consumer vanished: claimed, or dead-lettered after max deliveries, then requeued."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from app.main import create_app
from core.events import EventWriter
from core.keys import GROUP, Keys
from core.protocol import Done, Query, Sources, Token, encode_job, new_job
from tests.conftest import make_settings
from tests.servers import ThreadedUvicorn
from tests.workers_inproc import running_worker


async def index_facts(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from core.redis import connect
    from ingest.producer import Producer
    from tests.pdfs import write_pdf

    client = connect(settings.redis)
    try:
        results = await Producer(client, settings).run([write_pdf(tmp_path / "facts.pdf")], lambda *_: None)
    finally:
        await client.aclose()
    assert [r.status for r in results] == ["sent"]


async def orphan(redis: Redis, keys: Keys, question: str, deliveries: int) -> str:
    """A job read by a consumer that then died, already delivered ``deliveries`` times."""
    job = new_job(Query(question=question))
    await redis.hset(keys.record(job.id), mapping={"kind": "query", "created_ms": job.created_ms})
    with contextlib.suppress(ResponseError):  # BUSYGROUP: the group exists
        await redis.xgroup_create(keys.queries, GROUP, id="0", mkstream=True)
    # One transaction: a worker blocked reading the stream never gets the job first.
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.queries, {"job": encode_job(job)})
        pipe.xreadgroup(GROUP, "ghost", {keys.queries: ">"}, count=1)
        entry_id, _ = await pipe.execute()
    await redis.xclaim(keys.queries, GROUP, "ghost", 0, [entry_id], retrycount=deliveries, idle=10_000)
    return job.id


async def events_of(redis: Redis, keys: Keys, job_id: str, until: bytes, timeout: float = 20) -> list[bytes]:
    for _ in range(int(timeout / 0.05)):
        entries = await redis.xrange(keys.events(job_id))
        kinds = [f[b"type"] for _, f in entries]
        if until in kinds:  # a run of token events as one: how many depends on the coalescer's timing
            return [k for i, k in enumerate(kinds) if k != b"token" or kinds[i - 1 : i] != [b"token"]]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {until!r} event for {job_id}")


async def test_orphans_are_claimed_or_dead_lettered_and_requeued(redis_url: str, prefix: str, tmp_path: Path) -> None:
    settings = make_settings(redis_url, prefix, tmp_path, worker_claim_idle_ms="500", worker_max_deliveries="3")
    keys = Keys(prefix)
    redis = Redis.from_url(redis_url)
    async with running_worker(settings):
        await index_facts(settings, tmp_path)  # not an empty collection: the jobs are answered
        # Orphaned once the document is in (the worker's first claim pass ran as it started).
        retried = await orphan(redis, keys, "claimed by a live worker", deliveries=1)
        given_up = await orphan(redis, keys, "delivered too often", deliveries=3)
        assert await events_of(redis, keys, retried, b"done") == [b"restart", b"sources", b"token", b"done"]
        assert await events_of(redis, keys, given_up, b"error") == [b"error"]
        with ThreadedUvicorn(create_app(settings)) as server:
            async with httpx.AsyncClient(base_url=server.url) as client:
                dead = (await client.get("/v1/dead")).json()
                assert [(d["job_id"], d["code"], d["deliveries"]) for d in dead] == [(given_up, "max_deliveries", 4)]
                status = (await client.get(f"/v1/queries/{given_up}")).json()
                assert status["status"] == "failed" and status["error"]["code"] == "max_deliveries"
                requeued = await client.post(f"/v1/dead/{dead[0]['entry_id']}/requeue")
                assert requeued.status_code == 202 and requeued.json()["id"] == given_up
                assert await events_of(redis, keys, given_up, b"done") == [b"sources", b"token", b"done"]
                assert (await client.get("/v1/dead")).json() == []
                gone = await client.post("/v1/dead/1-0/requeue")
                assert gone.status_code == 404 and gone.json()["error"]["code"] == "dead_job_not_found"
                ready = (await client.get("/readyz")).json()
                assert ready["status"] == "ok" and ready["checks"]["workers"] == 1
    await redis.aclose()


async def test_an_ingest_batch_being_indexed_never_looks_idle(redis_url: str, prefix: str, tmp_path: Path,
                                                             llm_app) -> None:  # type: ignore[no-untyped-def]
    """An ingest batch whose embedding takes three claim timeouts (a slow embeddings endpoint) is kept from
    looking idle by the heartbeat, as answers are: no other worker process would take it over."""
    llm, base_url = llm_app
    settings = make_settings(redis_url, prefix, tmp_path, worker_claim_idle_ms="1000", embedder_backend="openai",
                             embedder_base_url=base_url)
    keys = Keys(prefix)
    redis = Redis.from_url(redis_url)
    async with running_worker(settings):
        llm.state.embed_delay = 3.0
        indexing = asyncio.create_task(index_facts(settings, tmp_path))
        idle = []
        while not indexing.done():
            idle += [p["time_since_delivered"] for p in
                     await redis.xpending_range(keys.ingest, GROUP, "-", "+", 100)]
            await asyncio.sleep(0.05)
        await indexing
    await redis.aclose()
    assert idle and max(idle) < 1000, f"an ingest batch being indexed looked idle for {max(idle)} ms"


async def test_a_job_whose_events_still_move_is_not_claimed(redis_url: str, prefix: str, tmp_path: Path) -> None:
    """A job that looks idle to Redis (its consumer's touches failed through an outage) while its events
    keep coming is alive in another worker process: the claim pass leaves it to that worker."""
    settings = make_settings(redis_url, prefix, tmp_path, worker_claim_idle_ms="1000")
    keys = Keys(prefix)
    redis = Redis.from_url(redis_url)
    elsewhere = EventWriter(redis, keys, settings.limits)  # the other worker, still answering
    async with running_worker(settings):
        job_id = await orphan(redis, keys, "answered elsewhere", deliveries=1)  # idle 10 s: past the timeout

        async def claim_pass_seen() -> bool:
            await elsewhere.emit(job_id, Token(text="more "))  # a token every 0.2 s: its stream moves
            pending = await redis.xpending_range(keys.queries, GROUP, "-", "+", 10)
            return pending[0]["times_delivered"] >= 2  # XAUTOCLAIM counted it, then left it

        for _ in range(150):
            if await claim_pass_seen():
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("no claim pass looked at the job")
        await elsewhere.emit(job_id, Done(answer="answered elsewhere"))
        (entry_id, _), = await redis.xrange(keys.queries)
        await redis.xack(keys.queries, GROUP, entry_id)
    kinds = {f[b"type"] for _, f in await redis.xrange(keys.events(job_id))}
    await redis.aclose()
    assert kinds == {b"token", b"done"}, kinds  # no restart, no sources: the worker never took it


async def test_a_job_that_ended_unacknowledged_is_not_answered_again(redis_url: str, prefix: str,
                                                                    tmp_path: Path) -> None:
    """A worker killed between a job's `done` and its acknowledgement leaves the job pending: the worker
    that takes it over acknowledges it and writes nothing (no `restart`, no second answer)."""
    settings = make_settings(redis_url, prefix, tmp_path, worker_claim_idle_ms="500")
    keys = Keys(prefix)
    redis = Redis.from_url(redis_url)
    killed = EventWriter(redis, keys, settings.limits)  # what the killed worker wrote
    job_id = await orphan(redis, keys, "answered already", deliveries=1)
    for event in (Sources(sources=[]), Token(text="answered"), Done(answer="answered")):
        await killed.emit(job_id, event)
    async with running_worker(settings):
        for _ in range(400):
            if not (await redis.xpending(keys.queries, GROUP))["pending"]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the ended job is still pending")
    kinds = [f[b"type"] for _, f in await redis.xrange(keys.events(job_id))]
    await redis.aclose()
    assert kinds == [b"sources", b"token", b"done"]
