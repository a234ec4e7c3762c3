"""Micro-batching against real Redis 7 and Valkey 9: what is held for the batch wait, and what goes at once."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from core.keys import Keys
from core.protocol import Query, encode_job, new_job
from workers.batcher import Batcher
from workers.consumer import Consumer

WAIT_MS = 400


async def _batcher(redis: Redis, prefix: str) -> tuple[Batcher, Keys]:
    keys = Keys(prefix)
    consumer = Consumer(redis, keys, "c")
    await consumer.ensure_groups()
    return Batcher(consumer, keys, wait_ms=WAIT_MS, block_ms=1000), keys


async def _enqueue(redis: Redis, keys: Keys, n: int) -> None:
    for i in range(n):
        await redis.xadd(keys.queries, {"job": encode_job(new_job(Query(question=f"q{i}")))})


async def test_a_query_found_by_a_poll_goes_at_once_when_nothing_is_answered(redis: Redis, prefix: str) -> None:
    # The question arrived while the consumer polled between ingest batches (not blocked in a read).
    batcher, keys = await _batcher(redis, prefix)
    await _enqueue(redis, keys, 2)
    start = time.monotonic()
    batch = await batcher.next(16, block=False, ingest=False, hold=False)
    assert batch.kind == "query" and len(batch.deliveries) == 2
    assert time.monotonic() - start < WAIT_MS / 1000 / 2


async def test_a_query_found_while_answers_run_is_held_for_more(redis: Redis, prefix: str) -> None:
    batcher, keys = await _batcher(redis, prefix)
    await _enqueue(redis, keys, 1)
    start = time.monotonic()
    batch = await batcher.next(16, block=False, ingest=False, hold=True)
    assert batch.kind == "query" and len(batch.deliveries) == 1
    assert time.monotonic() - start >= WAIT_MS / 1000


async def test_a_held_batch_closes_when_full(redis: Redis, prefix: str) -> None:
    batcher, keys = await _batcher(redis, prefix)
    await _enqueue(redis, keys, 4)
    start = time.monotonic()
    batch = await batcher.next(4, hold=True)
    assert len(batch.deliveries) == 4 and time.monotonic() - start < WAIT_MS / 1000 / 2


async def test_a_query_that_wakes_a_blocked_read_goes_at_once(redis: Redis, prefix: str) -> None:
    batcher, keys = await _batcher(redis, prefix)
    task = asyncio.create_task(batcher.next(16, hold=True))
    await asyncio.sleep(0.05)
    start = time.monotonic()
    await _enqueue(redis, keys, 1)
    batch = await task
    assert batch.kind == "query" and time.monotonic() - start < WAIT_MS / 1000 / 2
