"""Auto-pipelining: commands issued while a round trip is in flight go out together in the next one.

redis-py has no auto-pipelining (ioredis and Lettuce do), so this is ours. With 64 answers
streaming at once, a round trip per event, ack and counter cost the worker most of its
CPU (a connection checkout, a write and a read each); here each caller still awaits its
own reply, but every command issued in the meantime shares one pipeline: one write, one read.
Only for short non-blocking commands: a blocking read would stall everyone queued behind it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from redis.exceptions import NoScriptError, RedisError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

T = TypeVar("T")

#: Most commands in one pipeline; the rest go in the next round trip.
MAX_COMMANDS = 1024

#: A queued command: its arguments, its caller's future, and its script when it is an EVALSHA.
_Queued = tuple[tuple[Any, ...], "asyncio.Future[Any]", "AsyncScript | None"]

_PIPELINES: weakref.WeakKeyDictionary[Redis, AutoPipeline] = weakref.WeakKeyDictionary()


def autopipeline(redis: Redis) -> AutoPipeline:
    """The client's auto-pipeline: everyone writing through one client shares its round trips."""
    pipeline = _PIPELINES.get(redis)
    if pipeline is None:
        pipeline = _PIPELINES[redis] = AutoPipeline(redis)
    return pipeline


class AutoPipeline:
    def __init__(self, redis: Redis) -> None:
        # Weak: the client is the key of _PIPELINES, which must not keep it alive.
        self._redis = weakref.ref(redis)
        self._queue: list[_Queued] = []
        self._flusher: asyncio.Task[None] | None = None

    @property
    def redis(self) -> Redis:
        redis = self._redis()
        if redis is None:
            raise RuntimeError("the Redis client of this auto-pipeline is gone")
        return redis

    async def execute_command(self, *args: Any) -> Any:
        """Queue one command and wait for its reply (or its error)."""
        return await self.send(*args)

    async def many(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Queue commands next to each other (they go in the same write); their replies, in order."""
        return list(await asyncio.gather(*(self.send(*args) for args in commands)))

    async def script(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
        return await self.send_script(script, keys, args)

    def send_script(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> asyncio.Future[Any]:
        """EVALSHA; a server that lost its script cache (a restart) gets the script loaded and run."""
        return self.send("EVALSHA", script.sha, len(keys), *keys, *args, script=script)

    def send(self, *args: Any, script: AsyncScript | None = None) -> asyncio.Future[Any]:
        """Queue one command now; the future holds its reply. Futures of commands queued in
        one go can be gathered without a task each."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((args, future, script))
        if self._flusher is None:
            # It runs on the next loop iteration: whatever is queued in this one goes out with it.
            self._flusher = loop.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_COMMANDS], self._queue[MAX_COMMANDS:]
                await self._send(batch)
        except BaseException:  # cancelled (shutdown): nobody waits forever
            for _, future, _ in self._queue:
                future.cancel()
            self._queue.clear()
            raise
        finally:
            self._flusher = None

    async def _send(self, batch: list[_Queued], *, reloaded: bool = False) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for args, _, _ in batch:
                    pipe.execute_command(*args)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # noqa: BLE001 - every caller gets the error (Redis away, ...)
            replies = [exc] * len(batch)
        except BaseException:
            for _, future, _ in batch:
                future.cancel()
            raise
        missing = [q for q, reply in zip(batch, replies) if isinstance(reply, NoScriptError) and q[2] is not None]
        if missing and not reloaded and await self._load_scripts(missing):
            await self._send(missing, reloaded=True)
        for (_, future, _), reply in zip(batch, replies):
            if future.done():
                continue  # its caller was cancelled, or it was sent again above
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


    async def _load_scripts(self, missing: list[_Queued]) -> bool:
        try:
            for script in {id(q[2]): q[2] for q in missing}.values():
                await self.redis.script_load(script.script)  # type: ignore[union-attr]
        except (RedisError, OSError):
            return False  # the callers get their NOSCRIPT error
        return True


class TickBatch(Generic[T]):
    """Items added during one event-loop iteration, written together by one ``write`` call.

    For writes that merge (one XACK for many ids, one HINCRBY per counter); every caller
    awaits the shared write and gets its error, if any; a cancelled caller cancels only its wait.
    """

    def __init__(self, write: Callable[[list[T]], Awaitable[object]]) -> None:
        self._write = write
        self._items: list[tuple[T, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def add(self, item: T) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._items.append((item, future))
        if self._task is None:
            self._task = loop.create_task(self._run())
        await future

    async def _run(self) -> None:
        items, self._items, self._task = self._items, [], None
        try:
            await self._write([item for item, _ in items])
        except BaseException as exc:
            for _, future in items:
                if not future.done():
                    future.cancel() if isinstance(exc, asyncio.CancelledError) else future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for _, future in items:
            if not future.done():
                future.set_result(None)
