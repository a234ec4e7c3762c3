"""Worker counters, kept in one Redis hash so any process (tests, benchmarks, /readyz) can read them."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from core.autopipeline import TickBatch, autopipeline

if TYPE_CHECKING:
    from redis.asyncio import Redis


class Metrics:
    """``incr`` counts locally and in ``<p>:metrics``: embed calls, texts embedded, answers..."""

    def __init__(self, redis: Redis, key: str) -> None:
        self._pipe = autopipeline(redis)
        self._key = key
        self.local: Counter[str] = Counter()
        # The counts of concurrent answers go out as one HINCRBY per counter.
        self._pending: TickBatch[dict[str, int]] = TickBatch(self._write)

    async def incr(self, **counts: int) -> None:
        self.local.update(counts)
        await self._pending.add(counts)

    async def _write(self, counts: list[dict[str, int]]) -> None:
        total: Counter[str] = Counter()
        for c in counts:
            total.update(c)
        await self._pipe.many(*(("HINCRBY", self._key, name, value) for name, value in total.items()))
