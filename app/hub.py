"""One XREAD over every job stream this API process relays, fanned out to per-request queues.

Open SSE streams therefore hold no Redis connection of their own: the hub has one
dedicated connection for its blocking XREAD, and a new subscriber wakes it with
CLIENT UNBLOCK so the next XREAD includes the new stream at once.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog
from redis.exceptions import RedisError

from core.autopipeline import TickBatch, autopipeline
from core.loop import cancel
from core.protocol import TERMINAL

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = structlog.get_logger("app.hub")

#: An event as relayed: (entry id, type, JSON data).
Item = tuple[str, str, str]

#: A subscriber this far behind is dropped (its stream ends; the client resumes with Last-Event-ID).
MAX_QUEUED = 10_000


def entry_key(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id as a tuple that sorts as Redis orders entries."""
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)


class Subscription:
    __slots__ = ("cursor", "key", "queue")

    def __init__(self, key: str, after: str) -> None:
        self.key = key
        self.cursor = after
        #: Items, then None when the stream ends (terminal event, shutdown, or too far behind).
        self.queue: asyncio.Queue[Item | None] = asyncio.Queue()


class EventHub:
    def __init__(self, redis: Redis, reader: Redis, *, block_ms: int = 5_000) -> None:
        self._redis = redis
        #: A client with a single connection, used for nothing but the blocking XREAD.
        self._reader = reader
        self._block_ms = block_ms
        self._subs: dict[str, list[Subscription]] = {}
        self._reader_id: int | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Subscribers arriving together wake the reader once.
        self._wakes: TickBatch[None] = TickBatch(self._unblock)

    @property
    def open_streams(self) -> int:
        return sum(len(s) for s in self._subs.values())

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-hub")

    async def subscribe(self, key: str, after: str) -> Subscription:
        sub = Subscription(key, after)
        if self._closed:
            sub.queue.put_nowait(None)
            return sub
        self._subs.setdefault(key, []).append(sub)
        self._changed.set()
        await self._wake()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[sub.key]

    def close_all(self) -> None:
        """End every open stream now (shutdown): clients reconnect elsewhere and resume."""
        self._closed = True
        for subs in self._subs.values():
            for sub in subs:
                sub.queue.put_nowait(None)
        self._subs.clear()
        self._changed.set()

    async def stop(self) -> None:
        self.close_all()
        if self._task is not None:
            await cancel(self._task)

    async def _wake(self) -> None:
        if self._reader_id is not None:
            await self._wakes.add(None)

    async def _unblock(self, _: list[None]) -> None:
        if self._reader_id is None:
            return
        try:
            await autopipeline(self._redis).execute_command("CLIENT", "UNBLOCK", self._reader_id)
        except RedisError:
            pass  # the reader times out of its block soon anyway

    async def _run(self) -> None:
        backoff = 0.1
        while not self._closed:
            if not self._subs:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                if self._reader_id is None:
                    self._reader_id = int(await self._reader.client_id())
                self._changed.clear()
                streams = {key: min((s.cursor for s in subs), key=entry_key) for key, subs in self._subs.items()}
                reply = await self._reader.xread(streams, count=500, block=self._block_ms)  # type: ignore[arg-type]
                backoff = 0.1
            except (RedisError, OSError) as exc:
                # Keep every cursor: once Redis is back, nothing is lost or repeated.
                self._reader_id = None
                log.warning("hub_read_failed", error=str(exc), retry_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            for raw_key, entries in reply or []:
                key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
                self._deliver(key, entries)

    def _deliver(self, key: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        for sub in list(self._subs.get(key, [])):
            for entry_id, fields in entries:
                if entry_key(entry_id) <= entry_key(sub.cursor):
                    continue
                sub.cursor = entry_id.decode()
                kind = fields[b"type"].decode()
                sub.queue.put_nowait((sub.cursor, kind, fields[b"data"].decode()))
                if kind in TERMINAL or sub.queue.qsize() > MAX_QUEUED:
                    sub.queue.put_nowait(None)
                    self.unsubscribe(sub)
                    break
