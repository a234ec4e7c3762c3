"""Opening the Redis connection: one client per process, from the settings' URL."""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.settings import RedisSettings


def connect(settings: RedisSettings, *, max_connections: int | None = None) -> Redis:
    """A client with retries on connection errors; bytes in, bytes out.

    With ``max_connections``, callers past the limit wait for a free connection (up to
    10 s) instead of failing.
    """
    options: dict[str, Any] = {
        # redis-py's 5 s default would cut blocking XREADs (SSE keepalive 15 s) short.
        "socket_timeout": 60,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=3),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    pool: ConnectionPool
    if max_connections is not None:
        pool = BlockingConnectionPool.from_url(settings.url, max_connections=max_connections, timeout=10, **options)
    else:
        pool = ConnectionPool.from_url(settings.url, **options)
    return Redis.from_pool(pool)
