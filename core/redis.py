"""Opening the Redis connection: one client per process, from the settings' URL."""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.settings import RedisSettings


def connect(settings: RedisSettings, *, max_connections: int | None = None,
            reply_timeout_s: float | None = None) -> Redis:
    """A client with retries on connection errors; bytes in, bytes out.

    With ``max_connections``, callers past the limit wait for a free connection (up to
    10 s) instead of failing. With ``reply_timeout_s`` (a client that never blocks longer),
    a Redis that has not answered by then counts as gone, and the command is not retried:
    a Redis that accepts connections but answers nothing (frozen, or cut off without a reset)
    fails it in that time, not in four times the blocking reads' 60 s.
    """
    retried = (RedisConnectionError,) if reply_timeout_s else (RedisConnectionError, RedisTimeoutError)
    options: dict[str, Any] = {
        # redis-py's 5 s default would cut blocking XREADs (SSE keepalive 15 s) short.
        "socket_timeout": reply_timeout_s or 60,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=3, supported_errors=retried),
        "retry_on_error": list(retried),
    }
    pool: ConnectionPool
    if max_connections is not None:
        pool = BlockingConnectionPool.from_url(settings.url, max_connections=max_connections, timeout=10, **options)
    else:
        pool = ConnectionPool.from_url(settings.url, **options)
    return Redis.from_pool(pool)
