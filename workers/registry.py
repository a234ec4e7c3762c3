"""Worker identity and liveness: stable consumer names (host + index) held by leases, heartbeats.

A consumer name is ``<host>-<index>``: the lowest index whose lease is free. Names
therefore survive restarts (a restarted worker takes its old name back once the old
lease expired) while two live processes on one host never share one. The heartbeat
renews the leases and records each consumer in ``<p>:workers`` for /readyz.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import TYPE_CHECKING

import msgspec
import structlog
from redis.exceptions import RedisError

from core.heartbeats import LEASE_MS, Heartbeat
from core.protocol import now_ms

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.keys import Keys

log = structlog.get_logger("workers.registry")

HEARTBEAT_S = LEASE_MS / 3000

# Renew a lease only while we still hold it. KEYS: lease. ARGV: token, ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class Registry:
    def __init__(self, redis: Redis, keys: Keys, host: str | None = None) -> None:
        self.redis = self._redis = redis
        self._keys = keys
        self.host = host or socket.gethostname()
        self._token = uuid.uuid4().hex
        self._names: list[str] = []
        self._started = now_ms()

    def _lease(self, name: str) -> str:
        return f"{self._keys.workers}:lease:{name}"

    async def claim_names(self, count: int) -> list[str]:
        """``count`` consumer names for this process, lowest free indexes first."""
        index = 0
        while len(self._names) < count:
            name = f"{self.host}-{index}"
            if await self._redis.set(self._lease(name), self._token, nx=True, px=LEASE_MS):
                self._names.append(name)
            index += 1
        await self.beat()
        return list(self._names)

    async def beat(self) -> None:
        """Renew our leases and record our consumers as alive."""
        record = msgspec.json.encode(Heartbeat(self.host, os.getpid(), now_ms(), self._started))
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in self._names:
                pipe.eval(_RENEW, 1, self._lease(name), self._token, LEASE_MS)
                pipe.hset(self._keys.workers, name, record)
            await pipe.execute()

    async def release(self) -> None:
        """Give our names back at shutdown; best effort: with Redis gone, the leases expire anyway."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in self._names:
                    pipe.delete(self._lease(name))
                    pipe.hdel(self._keys.workers, name)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("release_failed", error=str(exc), lease_expires_s=LEASE_MS / 1000)
        self._names.clear()

