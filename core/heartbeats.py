"""Worker heartbeats as every process reads them (written by workers.leases)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from core.protocol import now_ms

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.keys import Keys

#: A consumer lease not renewed for this long is free again (its process died without a goodbye).
LEASE_MS = 15_000


class Heartbeat(msgspec.Struct):
    host: str
    pid: int
    heartbeat_ms: int
    started_ms: int


async def alive_workers(redis: Redis, keys: Keys) -> dict[str, Heartbeat]:
    """Consumers whose heartbeat is recent."""
    horizon = now_ms() - 3 * LEASE_MS
    raw = await redis.hgetall(keys.workers)
    beats = {k.decode(): msgspec.json.decode(v, type=Heartbeat) for k, v in raw.items()}
    return {name: beat for name, beat in beats.items() if beat.heartbeat_ms >= horizon}
