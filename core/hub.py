"""Following job event streams: one blocking XREAD over every followed stream, fanned out to subscribers.

The one follower of event streams: the API relays every SSE stream through one hub, and the
ingest producer follows its job's progress (and a deletion) through a hub of its own
(:func:`own_hub`). Open streams therefore hold no Redis connection of their own: the hub has
one dedicated connection for its blocking XREAD, and a new subscriber wakes it with
CLIENT UNBLOCK so the next XREAD includes the new stream at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.autopipeline import TickBatch, autopipeline
from core.loop import cancel
from core.protocol import EventEntry, read_event

log = structlog.get_logger("core.hub")

#: An event as relayed: (entry id, type, JSON data).
Item = EventEntry

#: A subscriber this far behind is dropped (its stream ends; the client resumes with Last-Event-ID).
MAX_QUEUED = 10_000


def entry_key(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id as a tuple that sorts as Redis orders entries."""
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)


class HubClosed(ConnectionError):
    """The hub shut down (the process is stopping) before the followed stream ended."""


class Subscription:
    __slots__ = ("cursor", "key", "queue", "sse")

    def __init__(self, key: str, after: str, *, sse: bool = False) -> None:
        self.key = key
        self.cursor = after
        #: Relayed to a client as an SSE response (not a request waiting for the job's result).
        self.sse = sse
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

    @property
    def sse_streams(self) -> int:
        """Subscriptions relayed as SSE responses now."""
        return sum(sub.sse for subs in self._subs.values() for sub in subs)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-hub")

    async def subscribe(self, key: str, after: str, *, sse: bool = False) -> Subscription:
        sub = Subscription(key, after, sse=sse)
        if self._closed:
            sub.queue.put_nowait(None)
            return sub
        self._subs.setdefault(key, []).append(sub)
        self._changed.set()
        await self._wake()
        return sub

    async def follow(self, key: str, after: str = "0-0") -> AsyncGenerator[EventEntry, None]:
        """The stream's entries after ``after``, up to and with its terminal one (close the generator
        when leaving early: ``contextlib.aclosing``). A subscriber that fell too far behind is dropped
        by the hub; this one picks up again where it was. Raises HubClosed if the hub stops first."""
        cursor = after
        while True:
            sub = await self.subscribe(key, cursor)
            try:
                while (entry := await sub.queue.get()) is not None:
                    cursor = entry.id
                    yield entry
                    if entry.terminal:
                        return
            finally:
                self.unsubscribe(sub)
            if self._closed:
                raise HubClosed(f"stopped following {key}")

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
                reply = await self._reader.xread(streams, count=500, block=self._block_ms)
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
        subs = self._subs.get(key)
        if not subs:
            return
        read = [(entry_key(entry_id), read_event(entry_id, fields)) for entry_id, fields in entries]
        for sub in list(subs):
            after = entry_key(sub.cursor)
            for position, entry in read:
                if position <= after:
                    continue
                sub.cursor = entry.id
                sub.queue.put_nowait(entry)
                if entry.terminal or sub.queue.qsize() > MAX_QUEUED:
                    sub.queue.put_nowait(None)
                    self.unsubscribe(sub)
                    break


@contextlib.asynccontextmanager
async def own_hub(redis: Redis) -> AsyncIterator[EventHub]:
    """A hub of its own, for a run that follows a few streams: its reader holds one connection of
    ``redis``'s pool while it is open."""
    reader = Redis(connection_pool=redis.connection_pool, single_connection_client=True)
    # Blocks of 1 s: the pool's reply timeout may be short (the API's is 5 s; a block as long would time out).
    hub = EventHub(redis, reader, block_ms=1_000)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()
        await reader.aclose()
