"""Relaying a job's event stream as SSE: each Redis entry id is the SSE ``id:``."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from litestar.response import ServerSentEventMessage

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.protocol import TERMINAL

if TYPE_CHECKING:
    from redis.asyncio import Redis

#: How long an open stream waits for Redis to come back before it closes (the client resumes).
OUTAGE_GRACE_S = 30.0

_ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def valid_entry_id(value: str) -> bool:
    return bool(_ENTRY_ID.fullmatch(value))


def _key(a: bytes) -> tuple[int, int]:
    ms, _, seq = a.partition(b"-")
    return int(ms), int(seq or 0)


async def relay(
    redis: Redis, key: str, *, after: str = "0-0", keepalive_s: float = 15.0
) -> AsyncIterator[ServerSentEventMessage]:
    """Events after entry id ``after``, then block for more, until a terminal event.

    A client that resumes after the terminal event gets nothing and the stream ends.
    """
    cursor = after.encode()
    last = await redis.xrevrange(key, count=1)
    if last:
        last_id, fields = last[0]
        if fields.get(b"type", b"").decode() in TERMINAL and _key(last_id) <= _key(cursor):
            return
    block_ms = int(keepalive_s * 1000)
    outage_started: float | None = None
    while True:
        try:
            reply = await redis.xread({key: cursor}, count=200, block=block_ms)
            outage_started = None
        except (RedisConnectionError, RedisTimeoutError):
            # The cursor is ours: ride out a short Redis outage, then let the client resume.
            now = time.monotonic()
            outage_started = outage_started or now
            if now - outage_started > OUTAGE_GRACE_S:
                return
            yield ServerSentEventMessage(comment="redis unavailable, retrying", data=None)
            await asyncio.sleep(1.0)
            continue
        if not reply:
            yield ServerSentEventMessage(comment="keepalive", data=None)
            continue
        for entry_id, fields in reply[0][1]:
            cursor = entry_id
            kind = fields[b"type"].decode()
            yield ServerSentEventMessage(id=entry_id.decode(), event=kind, data=fields[b"data"].decode())
            if kind in TERMINAL:
                return
