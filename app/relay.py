"""Relaying a job's event stream as SSE: each Redis entry id is the SSE ``id:``."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from core.hub import entry_key
from core.protocol import read_event

if TYPE_CHECKING:
    from litestar.types import Receive, Scope, Send
    from redis.asyncio import Redis

    from core.hub import EventHub

_ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def valid_entry_id(value: str) -> bool:
    return bool(_ENTRY_ID.fullmatch(value))


#: Most queued events relayed in one write.
MAX_EVENTS_PER_WRITE = 256

#: The keepalive comment.
KEEPALIVE = b": keepalive\n\n"

_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"connection", b"keep-alive"), (b"x-accel-buffering", b"no")]


def sse_event(entry_id: str, kind: str, data: str) -> bytes:
    """One SSE event. Framed here, not by Litestar's ServerSentEvent, which hops to a worker
    thread at the start of every stream: a measurable cost at a thousand questions a second."""
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"id: {entry_id}\nevent: {kind}\n{lines}\n".encode()


async def until_hangup(receive: Receive, work: Coroutine[Any, Any, bool],
                       on_abandon: Callable[[], None] | None) -> None:
    """Run ``work`` (True once it ended the response itself) while one small task watches for the client
    hanging up, which cancels it; ``on_abandon`` runs when the response did not end on our side."""
    task = asyncio.current_task()
    assert task is not None
    hung_up = False

    async def watch() -> None:
        nonlocal hung_up
        while (await receive())["type"] != "http.disconnect":
            pass
        hung_up = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    finished = False
    try:
        finished = await work
    except asyncio.CancelledError:
        if not hung_up:
            raise
        task.uncancel()
    finally:
        watcher.cancel()
        if not finished and on_abandon is not None:
            on_abandon()


class Relay:
    """The ASGI response relaying one job's events after entry id ``after`` until a terminal
    event, with a comment every ``keepalive_s``. Route handlers return it; Litestar passes an
    ASGI app through as it is.

    Not Litestar's ``Stream``: that runs an anyio task group per response and sends the end
    of the body as a write of its own. Here one small task watches for the client hanging up,
    and the terminal event and the end of the body go out in one write. A client that
    resumes after the terminal event gets nothing and the stream ends. ``on_abandon`` runs
    when the client goes away before the terminal event.
    """

    __slots__ = ("_after", "_headers", "_hub", "_keepalive_s", "_key", "_on_abandon", "_redis")

    def __init__(self, hub: EventHub, redis: Redis, key: str, *, after: str = "0-0", keepalive_s: float = 15.0,
                 on_abandon: Callable[[], None] | None = None, headers: Mapping[str, str] | None = None) -> None:
        self._hub = hub
        self._redis = redis
        self._key = key
        self._after = after
        self._keepalive_s = keepalive_s
        self._on_abandon = on_abandon
        self._headers = _SSE_HEADERS + [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        await until_hangup(receive, self._relay(send), self._on_abandon)

    async def _relay(self, send: Send) -> bool:
        """Send the events; True when the stream ended on our side (terminal event, shutdown, too far behind)."""
        if self._after != "0-0":  # from the start, the hub delivers up to the terminal event itself
            last = await self._redis.xrevrange(self._key, count=1)
            if last:
                entry = read_event(*last[0])
                if entry.terminal and entry_key(entry.id) <= entry_key(self._after):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return True
        sub = await self._hub.subscribe(self._key, self._after, sse=True)
        try:
            while True:
                try:
                    async with asyncio.timeout(self._keepalive_s):
                        item = await sub.queue.get()
                except TimeoutError:
                    await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
                    continue
                # Events already queued behind it go out in the same write (a client that fell
                # behind catches up in a few large writes, not thousands of small ones).
                chunks: list[bytes] = []
                while item is not None:
                    chunks.append(sse_event(*item))
                    if item.terminal or sub.queue.empty() or len(chunks) >= MAX_EVENTS_PER_WRITE:
                        break
                    item = sub.queue.get_nowait()
                # None: shutdown, or too far behind (the client resumes elsewhere); or the job ended.
                end = item is None or item.terminal
                if chunks or end:
                    await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": not end})
                if end:
                    return True
        finally:
            self._hub.unsubscribe(sub)
