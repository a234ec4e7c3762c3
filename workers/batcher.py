"""Micro-batching: the only module that decides which jobs are handled together.

A query batch closes at ``size`` jobs or ``wait_ms`` after its first job, whichever
comes first; except that a query which finds its consumer answering nothing is not held
back: the queries that arrived with it join it, and it goes (a lone user's every question
would otherwise wait ``wait_ms`` for nothing). Whether the consumer was blocked in a read or
polling between ingest batches when it came makes no difference. An ingest batch is one message (itself a
batch of chunks), taken only when no query is waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

from msgspec import Struct

if TYPE_CHECKING:
    from core.keys import Keys
    from workers.consumer import Consumer, Delivery


#: How often a filling batch looks for more queries.
FILL_POLL_S = 0.001

class Batch(Struct):
    kind: str  # "query" | "ingest" | "idle"
    deliveries: list[Delivery]


class Batcher:
    def __init__(self, consumer: Consumer, keys: Keys, *, wait_ms: int, block_ms: int) -> None:
        self._consumer = consumer
        self._keys = keys
        self._wait = wait_ms / 1000
        self._block_ms = block_ms
        # Ingest messages that arrived in the same blocking read as queries: already
        # pending for this consumer, handled once the queries are.
        self._held: deque[Delivery] = deque()

    @property
    def holding(self) -> int:
        return len(self._held)

    @property
    def held(self) -> list[Delivery]:
        return list(self._held)

    async def next(self, size: int, *, block: bool = True, ingest: bool = True, hold: bool = True) -> Batch:
        """The next batch, queries first; ``idle`` when nothing arrived within the block timeout.

        ``ingest=False`` (an ingest batch is already being indexed): queries only, without blocking.
        ``hold=False`` (no answer in progress): queries found go at once, not ``wait_ms`` later.
        """
        queries = await self._consumer.read(self._keys.queries, count=size)
        if not queries:
            if ingest and self._held:
                return Batch("ingest", [self._held.popleft()])
            if ingest:
                more = await self._consumer.read(self._keys.ingest, count=1)
                if more:
                    return Batch("ingest", more)
            if not block:
                return Batch("idle", [])
            if not ingest:
                return Batch("idle", [])  # the caller polls again while it indexes
            # COUNT 1: a blocking read must not hoard ingest batches other consumers could take.
            arrived = await self._consumer.wait_any(count=1, block_ms=self._block_ms)
            queries = [d for d in arrived if d.stream == self._keys.queries]
            self._held.extend(d for d in arrived if d.stream != self._keys.queries)
            if not queries:
                return Batch("ingest", [self._held.popleft()]) if self._held else Batch("idle", [])
            return await self._fill(queries, size, wait=0.0)
        return await self._fill(queries, size, wait=self._wait if hold else 0.0)

    async def _fill(self, queries: list[Delivery], size: int, wait: float) -> Batch:
        # The wait is timed here, not with a short XREADGROUP BLOCK: Redis and Valkey expire
        # blocked clients on their ~100 ms server tick, so BLOCK 5 would cost a lone query 100 ms.
        deadline = time.monotonic() + wait
        while len(queries) < size:
            more = await self._consumer.read(self._keys.queries, count=size - len(queries))
            queries.extend(more)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(queries) >= size:
                break
            if not more:
                await asyncio.sleep(min(FILL_POLL_S, remaining))
        return Batch("query", queries)
