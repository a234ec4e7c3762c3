"""Consumer names held by leases, and the heartbeat that renews them and tells /readyz who is alive.

A consumer name is ``<host>-<index>``: the lowest index whose lease is free. Names
therefore survive restarts while two live processes on one host never share one. A lease
names its holder (kernel boot, pid, process start time): a worker restarted on the same host
takes a name back at once when its holder is provably gone (that process no longer exists),
not only once the lease expired; the jobs still pending under that name are then orphans, and
the worker resumes them (see workers.recovery). The heartbeat renews the leases and records each
consumer in ``<p>:workers`` for /readyz.
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
from core.holders import holder_gone, identity
from core.protocol import now_ms

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.keys import Keys

log = structlog.get_logger("workers.leases")

HEARTBEAT_S = LEASE_MS / 3000

# Renew a lease while we hold it; take it back once it has expired (Redis was away longer than a lease:
# until the next beat, a worker starting on this host could take our name and resume our live jobs).
# Never one another process holds. KEYS: lease. ARGV: token, ms.
_RENEW = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not held then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""
# Take a lease over from a holder that is gone, unless it changed meanwhile. KEYS: lease. ARGV: seen, ours, ms.
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return false
"""


class NameLeases:
    """This process's consumer names, each held by a lease in Redis."""

    def __init__(self, redis: Redis, keys: Keys, host: str | None = None) -> None:
        self.redis = self._redis = redis
        self._keys = keys
        self.host = host or socket.gethostname()
        # The lease's value: a token, and who holds it (for holder_gone on this host).
        self._token = f"{uuid.uuid4().hex}:{identity()}"
        self._names: list[str] = []
        #: Names taken over from a holder that was gone (their pending jobs are orphans).
        self.taken_over: list[str] = []
        self._started = now_ms()

    async def claim_names(self, count: int) -> list[str]:
        """``count`` consumer names for this process, lowest free indexes first."""
        index = 0
        while len(self._names) < count:
            name = f"{self.host}-{index}"
            lease = self._keys.lease(name)
            if await self._redis.set(lease, self._token, nx=True, px=LEASE_MS):
                self._names.append(name)
            elif (held := await self._redis.get(lease)) is not None and holder_gone(held.decode()) and \
                    await self._redis.eval(_TAKE_OVER, 1, lease, held, self._token, LEASE_MS):
                log.info("name_taken_over", name=name, holder=held.decode().split(":", 2)[-1])
                self._names.append(name)
                self.taken_over.append(name)
            index += 1
        await self.beat()
        return list(self._names)

    async def beat(self) -> None:
        """Renew our leases and record our consumers as alive."""
        record = msgspec.json.encode(Heartbeat(self.host, os.getpid(), now_ms(), self._started))
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in self._names:
                pipe.eval(_RENEW, 1, self._keys.lease(name), self._token, LEASE_MS)
                pipe.hset(self._keys.workers, name, record)
            await pipe.execute()

    async def release(self) -> None:
        """Give our names back at shutdown; best effort: with Redis gone, the leases expire anyway."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in self._names:
                    pipe.delete(self._keys.lease(name))
                    pipe.hdel(self._keys.workers, name)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("release_failed", error=str(exc), lease_expires_s=LEASE_MS / 1000)
        self._names.clear()

