"""Coalescing LLM tokens: an answer becomes a few XADDs, not one per token."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable


class TokenCoalescer:
    """Buffers text deltas; flushes the first one at once, then at most every ``interval_ms``."""

    def __init__(self, flush: Callable[[str], Awaitable[object]], interval_ms: int) -> None:
        self._flush = flush
        self._interval = interval_ms / 1000
        self._parts: list[str] = []
        self._last = 0.0
        self.text: list[str] = []
        self.flushes = 0

    async def add(self, delta: str) -> None:
        self._parts.append(delta)
        self.text.append(delta)
        now = time.monotonic()
        # The first token goes out alone: time to first token is what users feel.
        if self.flushes == 0 or now - self._last >= self._interval:
            await self.flush(now)

    async def flush(self, now: float | None = None) -> None:
        if not self._parts:
            return
        chunk = "".join(self._parts)
        self._parts.clear()
        self._last = time.monotonic() if now is None else now
        self.flushes += 1
        await self._flush(chunk)

    @property
    def answer(self) -> str:
        return "".join(self.text)
