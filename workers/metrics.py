"""Worker counters, kept in one Redis hash so any process (tests, benchmarks, /readyz) can read them."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis


class Metrics:
    """``incr`` counts locally and in ``<p>:metrics``: embed calls, texts embedded, answers..."""

    def __init__(self, redis: Redis, key: str) -> None:
        self._redis = redis
        self._key = key
        self.local: Counter[str] = Counter()

    async def incr(self, **counts: int) -> None:
        self.local.update(counts)
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, value in counts.items():
                pipe.hincrby(self._key, name, value)
            await pipe.execute()
