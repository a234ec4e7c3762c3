"""Job event streams against real Redis 7 and Valkey 9: trimmed, expiring, finished exactly once."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest
from redis.asyncio import Redis

from core import hub as hub_module
from core.events import EventWriter
from core.hub import HubClosed, own_hub
from core.keys import Keys
from core.protocol import Done, Token, decode_event
from core.queue import JobQueue
from core.settings import LimitSettings


async def test_every_event_is_trimmed_and_expires(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    writer = EventWriter(redis, keys, LimitSettings(events_maxlen=10, events_ttl_s=120))
    ids = [await writer.emit("job1", Token(text=f"t{i}")) for i in range(500)]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split(b"-"))))
    assert 0 < await redis.ttl(keys.events("job1")) <= 120
    # MAXLEN ~ trims whole macro nodes: the stream stays near the limit, never grows unbounded.
    assert await redis.xlen(keys.events("job1")) < 200
    last = (await redis.xrevrange(keys.events("job1"), count=1))[0][1]
    assert decode_event(last[b"data"]) == Token(text="t499")


async def test_ingest_finishes_exactly_once(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    writer = EventWriter(redis, keys, LimitSettings())
    await JobQueue(redis, keys, LimitSettings()).create_record("ing", {"kind": "ingest"})
    # 20 batches of 5 chunks indexed concurrently while the producer seals at 100.
    results = await asyncio.gather(
        *(writer.ingest_progress("ing", 5, "a.pdf") for _ in range(10)),
        writer.ingest_sealed("ing", 100),
        *(writer.ingest_progress("ing", 5, "a.pdf") for _ in range(10)),
    )
    assert sum(results) == 1
    entries = await redis.xrange(keys.events("ing"))
    kinds = [fields[b"type"] for _, fields in entries]
    assert kinds.count(b"done") == 1 and kinds[-1] == b"done"
    done = decode_event(entries[-1][1][b"data"])
    assert isinstance(done, Done) and done.chunks == 100
    # Late progress after done writes nothing more.
    assert await writer.ingest_progress("ing", 5, "a.pdf") is False
    assert await redis.xlen(keys.events("ing")) == len(entries)


async def test_empty_ingest_finishes_on_seal(redis: Redis, prefix: str) -> None:
    writer = EventWriter(redis, Keys(prefix), LimitSettings())
    assert await writer.ingest_sealed("empty", 0) is True


async def test_submit_refuses_a_job_past_the_backlog_and_leaves_no_record(redis: Redis, prefix: str) -> None:
    from core.protocol import Query, new_job

    keys = Keys(prefix)
    events = JobQueue(redis, keys, LimitSettings())
    jobs = [new_job(Query(question=f"q{i}")) for i in range(5)]
    # Submitted together (one round trip): the check and the XADD are one step, so no overshoot.
    results = await asyncio.gather(*(events.submit(job, keys.queries, {"question": "q"}, max_backlog=3)
                                     for job in jobs))
    assert results == [None, None, None, 3, 3]
    assert await redis.xlen(keys.queries) == 3
    assert [await redis.exists(keys.record(job.id)) for job in jobs] == [1, 1, 1, 0, 0]


async def test_job_events_keep_order_and_stop_at_a_cancel(redis: Redis, prefix: str) -> None:
    from core.events import JobCancelled

    keys = Keys(prefix)
    writer = EventWriter(redis, keys, LimitSettings())
    queue = JobQueue(redis, keys, LimitSettings())
    await queue.create_record("j", {"kind": "query"})
    events = writer.job("j")
    # Emitted without waiting for each reply: written in order all the same.
    for i in range(50):
        await events.emit(Token(text=f"t{i}"))
    await events.settle()
    entries = await redis.xrange(keys.events("j"))
    assert [decode_event(f[b"data"]) for _, f in entries] == [Token(text=f"t{i}") for i in range(50)]

    # Cancelled with writes in flight: one `cancelled` event, nothing after it, and the writer is told.
    assert await queue.cancel("j") == 1
    raised = False
    try:
        await events.emit(Token(text="late"))
        await events.emit(Done(answer="late"))
        await events.settle()
    except JobCancelled:
        raised = True
    assert raised
    kinds = [f[b"type"] for _, f in await redis.xrange(keys.events("j"))]
    assert kinds[50:] == [b"cancelled"]


async def test_a_follower_that_falls_behind_picks_up_where_it_was(redis: Redis, prefix: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "MAX_QUEUED", 5)  # the hub drops a subscriber 5 events behind
    keys = Keys(prefix)
    writer = EventWriter(redis, keys, LimitSettings())
    for i in range(20):
        await writer.emit("j", Token(text=f"t{i}"))
    await writer.emit("j", Done(answer="a"))
    async with own_hub(redis) as hub, aclosing(hub.follow(keys.events("j"))) as entries:
        got = [entry.event() async for entry in entries]
    assert got == [Token(text=f"t{i}") for i in range(20)] + [Done(answer="a")]


async def test_a_follower_is_told_when_its_hub_stops(redis: Redis, prefix: str) -> None:
    async with own_hub(redis) as hub:
        entries = hub.follow(Keys(prefix).events("silent"))
        waiting = asyncio.ensure_future(anext(entries))
        await asyncio.sleep(0.05)
        await hub.stop()
        with pytest.raises(HubClosed):
            await waiting
