"""The consumer group: the only module that issues XREADGROUP, XACK, XAUTOCLAIM and dead-letters.

Messages stay pending (unacknowledged) until their job's terminal event is written,
so a consumer that dies leaves them for XAUTOCLAIM by another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from msgspec import Struct
from redis.exceptions import ResponseError

from core.autopipeline import TickBatch, autopipeline
from core.keys import GROUP, Keys
from core.protocol import DeadLetter, Job, MalformedJob, encode_job, now_ms, read_job

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from workers.metrics import WorkerMetrics

log = structlog.get_logger("workers.consumer")


class Delivery(Struct):
    """One job message as this consumer received it."""

    stream: str
    entry_id: bytes
    job: Job | None
    #: Why the message could not be decoded; such a message is dead on arrival.
    malformed: str | None = None
    #: 1 on first delivery; more when claimed from a consumer that went away.
    deliveries: int = 1
    #: Its job's client was already told to discard the partial answer (the `restart` event is written).
    announced: bool = False


class Consumer:
    def __init__(self, redis: Redis, keys: Keys, name: str, *, metrics: WorkerMetrics | None = None) -> None:
        self._redis = redis
        self._metrics = metrics
        self._pipe = autopipeline(redis)  # acks share round trips with the jobs' events
        # Concurrent answers' acks merge: one XACK and one XDEL per stream.
        self._acks: TickBatch[Delivery] = TickBatch(self._ack_many)
        self._keys = keys
        self.name = name
        # XAUTOCLAIM cursors per stream: each call continues where the last one stopped.
        self._cursors: dict[str, bytes] = {keys.queries: b"0-0", keys.ingest: b"0-0"}

    async def ensure_groups(self) -> None:
        for stream in (self._keys.queries, self._keys.ingest):
            try:
                await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(self, stream: str, *, count: int, block_ms: int | None = None) -> list[Delivery]:
        """New messages from one job stream."""
        reply = await self._xreadgroup({stream: ">"}, count=count, block=block_ms)
        return [self._delivery(stream, e, f) for _, entries in reply for e, f in entries]

    async def wait_any(self, *, count: int, block_ms: int) -> list[Delivery]:
        """Block until a query or an ingest batch arrives; queries come first in the result."""
        streams = {self._keys.queries: ">", self._keys.ingest: ">"}
        reply = await self._xreadgroup(streams, count=count, block=block_ms)
        deliveries = [self._delivery(_str(name), e, f) for name, entries in reply for e, f in entries]
        deliveries.sort(key=lambda d: d.stream != self._keys.queries)
        return deliveries

    async def _xreadgroup(self, streams: dict[str, str], *, count: int, block: int | None) -> list:  # type: ignore[type-arg]
        try:
            return await self._redis.xreadgroup(GROUP, self.name, streams, count=count, block=block) or []
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                await self.ensure_groups()
                return []
            raise

    def _delivery(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int = 1) -> Delivery:
        try:
            return Delivery(stream, entry_id, read_job(fields), deliveries=deliveries)
        except MalformedJob as exc:
            return Delivery(stream, entry_id, None, malformed=str(exc), deliveries=deliveries)

    async def claim_stale(self, stream: str, *, min_idle_ms: int, count: int) -> list[Delivery]:
        """Messages whose consumer went silent for ``min_idle_ms``, with their delivery counts."""
        reply = await self._redis.xautoclaim(
            stream, GROUP, self.name, min_idle_ms, start_id=self._cursors[stream], count=count
        )
        self._cursors[stream], entries = reply[0], reply[1]
        entries = [(entry_id, fields) for entry_id, fields in entries if fields]
        if not entries:
            return []
        counts: dict[bytes, int] = {}
        for entry_id, _ in entries:
            info = await self._redis.xpending_range(stream, GROUP, min=entry_id, max=entry_id, count=1)
            counts[entry_id] = int(info[0]["times_delivered"]) if info else 1
        return [self._delivery(stream, e, f, counts[e]) for e, f in entries]

    async def pending_own(self, stream: str, *, count: int, after: bytes | None = None) -> list[Delivery]:
        """Messages pending under this consumer's own name, after entry ``after``: left by the process that
        held the name before (killed, or stopped with answers unfinished). Taken up again: their delivery
        counts go up by one, as a claim's do."""
        pending = await self._redis.xpending_range(stream, GROUP, min=b"(" + after if after else "-", max="+",
                                                   count=count, consumername=self.name)
        if not pending:
            return []
        counts = {p["message_id"]: int(p["times_delivered"]) + 1 for p in pending}
        entries = await self._redis.xclaim(stream, GROUP, self.name, 0, list(counts))
        return [self._delivery(stream, e, f, counts[e]) for e, f in entries if f]

    async def touch(self, stream: str, entry_ids: list[bytes]) -> None:
        """Reset the idle time of messages we are still working on, so nobody claims a live job."""
        if entry_ids:
            # JUSTID: no delivery count increase, no payload sent back.
            await self._redis.xclaim(stream, GROUP, self.name, 0, entry_ids, justid=True)

    async def prune_consumers(self, *, idle_ms: int, keep: set[str]) -> list[str]:
        """Remove consumers idle for ``idle_ms`` with nothing pending: long-dead workers."""
        removed = []
        for stream in (self._keys.queries, self._keys.ingest):
            for info in await self._redis.xinfo_consumers(stream, GROUP):
                name = _str(info["name"])
                if name not in keep and int(info["pending"]) == 0 and int(info["idle"]) >= idle_ms:
                    await self._redis.xgroup_delconsumer(stream, GROUP, name)
                    removed.append(name)
        return removed

    async def ack(self, delivery: Delivery) -> None:
        """Done with a message: acknowledge and delete it, so the stream's length is its backlog."""
        await self._acks.add(delivery)

    async def _ack_many(self, deliveries: list[Delivery]) -> None:
        by_stream: dict[str, list[bytes]] = {}
        for d in deliveries:
            by_stream.setdefault(d.stream, []).append(d.entry_id)
        await self._pipe.many(*(command for stream, ids in by_stream.items()
                                for command in (("XACK", stream, GROUP, *ids), ("XDEL", stream, *ids))))

    async def dead_letter(self, delivery: Delivery, code: str, message: str) -> None:
        """Move a message to the dead-letter stream with its last error, then acknowledge it."""
        job = delivery.job
        letter = DeadLetter(stream=delivery.stream, entry_id=delivery.entry_id.decode(), code=code, error=message,
                            deliveries=delivery.deliveries, consumer=self.name, dead_ms=now_ms(),
                            job=encode_job(job) if job else None, job_id=job.id if job else None)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self._keys.dead, letter.fields(), maxlen=100_000, approximate=True)
            pipe.xack(delivery.stream, GROUP, delivery.entry_id)
            pipe.xdel(delivery.stream, delivery.entry_id)
            await pipe.execute()
        if self._metrics is not None:
            self._metrics.dead_letter(delivery.stream, code)
        log.warning("dead_lettered", stream=delivery.stream, code=code, error=message, deliveries=delivery.deliveries)


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
