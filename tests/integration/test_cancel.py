"""Cancelling a task that talks to Redis ends it, every time (core.loop.cancel)."""

from __future__ import annotations

import asyncio
import random

from redis.asyncio import Redis

from core.loop import cancel


async def test_a_task_issuing_redis_commands_ends_when_cancelled(redis: Redis, prefix: str) -> None:
    """On Python 3.11, asyncio.wait_for inside redis-py drops some cancellations (9 of 40 measured): a
    cancel that lands just as a command's send completes. The worker's heartbeat was such a task, and
    its shutdown then waited on it forever."""

    async def beating() -> None:
        while True:
            await redis.set(f"{prefix}:beat", "1")
            await asyncio.sleep(0.001)

    rng = random.Random(7)
    for _ in range(40):
        task = asyncio.create_task(beating())
        await asyncio.sleep(rng.random() * 0.01)
        await asyncio.wait_for(cancel(task), 5)
        assert task.cancelled()
