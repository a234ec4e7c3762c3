"""An instant OpenAI-compatible server for benchmarks: embeddings and a chat stream as fast as it can go.

A raw ASGI app (no framework) so the fake costs as little as possible. Chat streams
exactly ``max_tokens`` tokens, each the wall-clock time it was sent (`` t<ns>``), so
a client can measure every token's relay latency; under ``/pace/<ms>/`` it waits
that many milliseconds between tokens, like a real LLM; under ``/tokens/<n>/`` it streams n
tokens and ends the answer itself (``finish_reason`` stop, not length: the worker drops the
unfinished sentence of an answer cut at max_tokens). Embeddings are the tests' hashing
embedding (64 dimensions): texts that share words get similar vectors.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from tests.fake_openai import hash_embedding


async def _body(receive: Any) -> dict[str, Any]:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return json.loads(b"".join(chunks) or b"{}")


def _chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = await _body(receive)
    path = scope["path"]
    if path.endswith("/embeddings"):
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        payload = json.dumps({
            "object": "list", "model": "bench",
            "data": [{"object": "embedding", "index": i, "embedding": hash_embedding(t)} for i, t in enumerate(inputs)],
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})
        return
    if path.endswith("/chat/completions"):
        pace = re.search(r"/pace/(\d+)/", path)
        delay = int(pace.group(1)) / 1000 if pace else 0.0
        count = re.search(r"/tokens/(\d+)/", path)
        tokens = int(count.group(1)) if count else int(body.get("max_tokens") or 256)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        for _ in range(tokens):
            await send({"type": "http.response.body", "body": _chunk(f" t{time.time_ns()}"), "more_body": True})
            if delay:
                await asyncio.sleep(delay)
        await send({"type": "http.response.body", "body": _chunk(None, "stop" if count else "length")
                    + b"data: [DONE]\n\n"})
        return
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})
