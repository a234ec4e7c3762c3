"""Auto-pipelining against a real server: shared round trips, per-caller replies and errors."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from core.autopipeline import AutoPipeline, TickBatch, autopipeline


def _key() -> str:
    return f"autopipe-{uuid.uuid4().hex[:8]}"


async def _commands_processed(redis: Redis) -> int:
    return int((await redis.info("stats"))["total_commands_processed"])


async def test_concurrent_commands_share_one_connection_and_keep_their_replies(redis: Redis) -> None:
    pipe = AutoPipeline(redis)
    key = _key()
    replies = await asyncio.gather(*(pipe.execute_command("INCR", key) for _ in range(200)))
    # Each caller got its own reply, in the order the commands were queued.
    assert replies == list(range(1, 201))
    # One pipeline at a time: a single connection was ever needed, not 200.
    assert len(redis.connection_pool._available_connections) + len(redis.connection_pool._in_use_connections) == 1  # type: ignore[attr-defined]


async def test_many_sends_its_commands_together_in_order(redis: Redis) -> None:
    pipe = autopipeline(redis)
    assert autopipeline(redis) is pipe  # one per client
    key = _key()
    assert await pipe.many(("RPUSH", key, "a"), ("RPUSH", key, "b"), ("LRANGE", key, 0, -1)) == [1, 2, [b"a", b"b"]]


async def test_an_error_reaches_only_its_caller(redis: Redis) -> None:
    pipe = AutoPipeline(redis)
    key, other = _key(), _key()
    await redis.hset(key, "f", "v")
    results = await asyncio.gather(pipe.execute_command("INCR", key), pipe.execute_command("INCR", other),
                                   return_exceptions=True)
    assert isinstance(results[0], ResponseError) and "WRONGTYPE" in str(results[0])
    assert results[1] == 1


async def test_scripts_survive_a_flushed_script_cache(redis: Redis) -> None:
    pipe = AutoPipeline(redis)
    script = redis.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    key = _key()
    assert await pipe.script(script, [key], [2]) == 2
    await redis.script_flush()  # as after a server restart
    assert await pipe.script(script, [key], [3]) == 5


async def test_a_cancelled_caller_does_not_disturb_the_others(redis: Redis) -> None:
    pipe = AutoPipeline(redis)
    key = _key()
    doomed = asyncio.ensure_future(pipe.execute_command("INCR", key))
    kept = asyncio.ensure_future(pipe.execute_command("INCR", key))
    await asyncio.sleep(0)
    doomed.cancel()
    assert await kept in (1, 2)  # the cancelled command may have gone out already
    assert await pipe.execute_command("GET", key) in (b"1", b"2")


async def test_every_caller_gets_the_connection_error(unused_tcp_port: int) -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{unused_tcp_port}/0", socket_connect_timeout=1)
    try:
        pipe = AutoPipeline(dead)
        results = await asyncio.gather(*(pipe.execute_command("PING") for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, (RedisConnectionError, OSError)) for r in results), results
    finally:
        await dead.aclose()


async def test_tick_batch_merges_what_arrives_together() -> None:
    writes: list[list[int]] = []

    async def write(items: list[int]) -> None:
        writes.append(items)

    batch: TickBatch[int] = TickBatch(write)
    await asyncio.gather(*(batch.add(i) for i in range(5)))
    await batch.add(5)
    assert writes == [[0, 1, 2, 3, 4], [5]]


async def test_tick_batch_errors_reach_every_caller() -> None:
    async def write(items: list[int]) -> None:
        raise ValueError(f"refused {len(items)}")

    batch: TickBatch[int] = TickBatch(write)
    results = await asyncio.gather(batch.add(1), batch.add(2), return_exceptions=True)
    assert [str(r) for r in results] == ["refused 2", "refused 2"]


@pytest.mark.parametrize("acks", [1, 40])
async def test_acks_of_concurrent_answers_merge_into_one_xack(redis: Redis, acks: int) -> None:
    from core.keys import GROUP, Keys
    from core.protocol import Query, encode_job, new_job
    from workers.consumer import Consumer

    keys = Keys(_key())
    consumer = Consumer(redis, keys, "c1")
    await consumer.ensure_groups()
    for _ in range(acks):
        await redis.xadd(keys.queries, {"job": encode_job(new_job(Query(question="q")))})
    deliveries = await consumer.read(keys.queries, count=acks)
    before = await _commands_processed(redis)
    await asyncio.gather(*(consumer.ack(d) for d in deliveries))
    # One XACK and one XDEL for all of them (the INFO call itself counts too).
    assert await _commands_processed(redis) - before <= 3
    assert await redis.xlen(keys.queries) == 0
    assert (await redis.xpending(keys.queries, GROUP))["pending"] == 0
