"""Opening the Redis connection: one client per process, from the settings' URL."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.settings import RedisSettings


def connect(settings: RedisSettings, *, max_connections: int | None = None) -> Redis:
    """A client with retries on connection errors; bytes in, bytes out."""
    return Redis.from_url(
        settings.url,
        decode_responses=False,
        max_connections=max_connections,
        # redis-py's 5 s default would cut blocking XREADs (SSE keepalive 15 s) short.
        socket_timeout=60,
        socket_connect_timeout=5,
        health_check_interval=30,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
