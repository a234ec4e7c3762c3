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
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

#: Most commands in one pipeline; the rest go in the next round trip.
MAX_COMMANDS = 1024

_Queued = tuple[tuple[Any, ...], "asyncio.Future[Any]"]

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
        (reply,) = await self.many(args)
        return reply

    async def many(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Queue commands next to each other (they go in the same write); their replies, in order."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self._queue.extend(zip(commands, futures))
        if self._flusher is None:
            # It runs on the next loop iteration: whatever is queued in this one goes out with it.
            self._flusher = loop.create_task(self._flush())
        return list(await asyncio.gather(*futures))

    async def script(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
        """EVALSHA in the pipeline; a server that lost its script cache (a restart) gets the script loaded."""
        try:
            return await self.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await script(keys=keys, args=args)  # loads it, then runs it

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_COMMANDS], self._queue[MAX_COMMANDS:]
                await self._send(batch)
        except BaseException:  # cancelled (shutdown): nobody waits forever
            for _, future in self._queue:
                future.cancel()
            self._queue.clear()
            raise
        finally:
            self._flusher = None

    async def _send(self, batch: list[_Queued]) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for args, _ in batch:
                    pipe.execute_command(*args)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # noqa: BLE001 - every caller gets the error (Redis away, ...)
            replies = [exc] * len(batch)
        except BaseException:
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), reply in zip(batch, replies):
            if future.done():
                continue  # its caller was cancelled
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
