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


#: Most queued events relayed in one write.
MAX_EVENTS_PER_WRITE = 256

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
                async with asyncio.timeout(keepalive_s):
                    item = await sub.queue.get()
            except TimeoutError:
                yield KEEPALIVE
                continue
            # Events already queued behind it go out in the same write (a client that fell
            # behind catches up in a few large writes, not thousands of small ones).
            chunks: list[bytes] = []
            while item is not None:
                entry_id, kind, data = item
                chunks.append(sse_event(entry_id, kind, data))
                if kind in TERMINAL or sub.queue.empty() or len(chunks) >= MAX_EVENTS_PER_WRITE:
                    break
                item = sub.queue.get_nowait()
            if chunks:
                yield b"".join(chunks)
            # None: shutdown, or too far behind (the client resumes elsewhere); or the job ended.
            if item is None or item[1] in TERMINAL:
                finished = True
                return
    finally:
        hub.unsubscribe(sub)
        if not finished and on_abandon is not None:
            on_abandon()
