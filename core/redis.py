"""Opening the Redis connection: one client per process, from the settings' URL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.settings import RedisSettings

T = TypeVar("T")

#: Set while a counted attempt runs: the connect that a command's attempt makes retries on its own, uncounted.
_ATTEMPT: ContextVar[bool] = ContextVar("redis_attempt", default=False)


class _Shared:
    """A callback that redis-py's deep copy of the retry (one per connection) leaves as it is: every copy reports
    to the same counter."""

    __slots__ = ("call",)

    def __init__(self, call: Callable[[BaseException], None]) -> None:
        self.call = call

    def __deepcopy__(self, memo: dict[int, Any]) -> _Shared:
        return self


class CountingRetry(Retry):  # type: ignore[misc]  # redis-py's types are skipped (pyproject.toml)
    """redis-py's retry, which also reports each failed attempt to talk to Redis to ``on_error``: commands,
    pipelines, blocking reads, pub/sub and connects, whether the error is retried or not. Only the outermost
    attempt is counted: the connect a command makes inside its own attempt is not counted again."""

    def __init__(self, *args: Any, on_error: Callable[[BaseException], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_error = _Shared(on_error)

    async def call_with_retry(self, do: Callable[[], Awaitable[T]], fail: Any, *args: Any, **kwargs: Any) -> T:
        if _ATTEMPT.get():
            return await super().call_with_retry(do, fail, *args, **kwargs)  # type: ignore[no-any-return]

        async def attempt() -> T:
            token = _ATTEMPT.set(True)
            try:
                return await do()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self._on_error.call(exc)
                raise
            finally:
                _ATTEMPT.reset(token)

        return await super().call_with_retry(attempt, fail, *args, **kwargs)  # type: ignore[no-any-return]


def connect(settings: RedisSettings, *, max_connections: int | None = None,
            reply_timeout_s: float | None = None, on_error: Callable[[BaseException], None] | None = None) -> Redis:
    """A client with retries on connection errors; bytes in, bytes out.

    With ``max_connections``, callers past the limit wait for a free connection (up to
    10 s) instead of failing. With ``reply_timeout_s`` (a client that never blocks longer),
    a Redis that has not answered by then counts as gone, and the command is not retried:
    a Redis that accepts connections but answers nothing (frozen, or cut off without a reset)
    fails it in that time, not in four times the blocking reads' 60 s. ``on_error`` hears of every failed
    attempt (the process's Redis error count).
    """
    retried = (RedisConnectionError,) if reply_timeout_s else (RedisConnectionError, RedisTimeoutError)
    backoff = ExponentialBackoff(cap=2.0, base=0.05)
    retry = (CountingRetry(backoff, retries=3, supported_errors=retried, on_error=on_error) if on_error
             else Retry(backoff, retries=3, supported_errors=retried))
    options: dict[str, Any] = {
        # redis-py's 5 s default would cut blocking XREADs (SSE keepalive 15 s) short.
        "socket_timeout": reply_timeout_s or 60,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry": retry,
        "retry_on_error": list(retried),
    }
    pool: ConnectionPool
    if max_connections is not None:
        pool = BlockingConnectionPool.from_url(settings.url, max_connections=max_connections, timeout=10, **options)
    else:
        pool = ConnectionPool.from_url(settings.url, **options)
    return Redis.from_pool(pool)
