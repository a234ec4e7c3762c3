"""Worker counters, kept in one Redis hash so any process (tests, benchmarks, /readyz) can read them."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING

import structlog
from redis.exceptions import RedisError

from core.autopipeline import autopipeline

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = structlog.get_logger("workers.metrics")


class Metrics:
    """``incr`` counts locally at once and in ``<p>:metrics`` soon after: embed calls, answers...

    Nobody waits for a counter: what is counted while a write is in flight goes out in the
    next one, one HINCRBY per counter.
    """

    def __init__(self, redis: Redis, key: str) -> None:
        self._pipe = autopipeline(redis)
        self._key = key
        self.local: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self._writing: asyncio.Task[None] | None = None

    def incr(self, **counts: int) -> None:
        self.local.update(counts)
        self._pending.update(counts)
        if self._writing is None:
            self._writing = asyncio.get_running_loop().create_task(self._write())

    async def flush(self) -> None:
        """Write what is still pending (at shutdown)."""
        if self._writing is not None:
            await self._writing
        if self._pending:
            self._writing = asyncio.get_running_loop().create_task(self._write())
            await self._writing

    async def _write(self) -> None:
        try:
            while self._pending:
                counts, self._pending = self._pending, Counter()
                try:
                    await self._pipe.many(*(("HINCRBY", self._key, name, value) for name, value in counts.items()))
                except (RedisError, OSError) as exc:
                    self._pending.update(counts)  # written with the next counts
                    log.warning("metrics_write_failed", error=str(exc))
                    return
        finally:
            self._writing = None
