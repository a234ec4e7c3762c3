"""Relaying a job's event stream as SSE: each Redis entry id is the SSE ``id:``."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from core.protocol import TERMINAL

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from app.hub import EventHub

_ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def valid_entry_id(value: str) -> bool:
    return bool(_ENTRY_ID.fullmatch(value))


#: The keepalive comment.
KEEPALIVE = b": keepalive\n\n"


def sse_event(entry_id: str, kind: str, data: str) -> bytes:
    """One SSE event. Framed here, not by Litestar's ServerSentEvent, which hops to a worker
    thread at the start of every stream: a measurable cost at a thousand questions a second."""
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"id: {entry_id}\nevent: {kind}\n{lines}\n".encode()


def _key(a: bytes | str) -> tuple[int, int]:
    raw = a.decode() if isinstance(a, bytes) else a
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)


async def relay(
    hub: EventHub,
    redis: Redis,
    key: str,
    *,
    after: str = "0-0",
    keepalive_s: float = 15.0,
    on_abandon: Callable[[], None] | None = None,
) -> AsyncIterator[bytes]:
    """Events after entry id ``after`` until a terminal event; a comment every ``keepalive_s``.

    A client that resumes after the terminal event gets nothing and the stream ends.
    ``on_abandon`` runs when the client goes away before the terminal event.
    """
    if after != "0-0":  # from the start, the hub delivers up to the terminal event itself
        last = await redis.xrevrange(key, count=1)
        if last:
            last_id, fields = last[0]
            if fields.get(b"type", b"").decode() in TERMINAL and _key(last_id) <= _key(after):
                return
    sub = await hub.subscribe(key, after)
    finished = False
    try:
        while True:
            try:
                item = await asyncio.wait_for(sub.queue.get(), keepalive_s)
            except TimeoutError:
                yield KEEPALIVE
                continue
            if item is None:
                finished = True  # shutdown or too far behind: the client resumes elsewhere
                return
            entry_id, kind, data = item
            yield sse_event(entry_id, kind, data)
            if kind in TERMINAL:
                finished = True
                return
    finally:
        hub.unsubscribe(sub)
        if not finished and on_abandon is not None:
            on_abandon()
