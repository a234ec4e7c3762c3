"""Integration fixtures: a client for each Redis flavour in turn."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis


@pytest.fixture
async def redis(any_redis_url: str) -> AsyncIterator[Redis]:
    """An async client on Redis 7 and on Valkey 9 in turn (and REDIS_URL when set)."""
    client = Redis.from_url(any_redis_url)
    yield client
    await client.aclose()
