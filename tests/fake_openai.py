"""A small OpenAI-compatible server for fast tests: streams chat completions and serves embeddings.

It answers deterministically from the prompt it receives (quoting source [1]), so tests
can check that retrieval reached the LLM. A real server on loopback, not a patched client.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from litestar import Litestar, Request, post
from litestar.response import Stream

#: "[1] file, page 2 (section): the sentences chosen from source 1" (workers.generator.build_prompt).
_SOURCE_ONE = re.compile(r"^\[1\] [^:\n]*: (.+)$", re.MULTILINE)


def answer_for(prompt: str) -> str:
    match = _SOURCE_ONE.search(prompt)
    quote = " ".join(match.group(1).split()[:12]) if match else "nothing relevant"
    return f"According to the documents, {quote} [1]."


def _chunk(content: str | None, *, finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "fake",
        "choices": [] if usage else [{"index": 0, "delta": {"content": content} if content else {},
                                      "finish_reason": finish}],
    }
    if usage:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def rewrite_for(prompt: str) -> str:
    """A follow-up made standalone, as a model would: the last question, about the first one's subject."""
    questions = [line[len("User: "):] for line in prompt.splitlines() if line.startswith("User: ")]
    return f"{questions[-1]} (regarding: {questions[0]})"


def _completion(content: str) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@post("/v1/chat/completions")
async def chat(request: Request[Any, Any, Any]) -> Stream | dict[str, Any]:
    body = await request.json()
    request.app.state.setdefault("requests", []).append(body)
    prompt = body["messages"][-1]["content"]
    if not body.get("stream"):  # a follow-up's rewrite (workers.followups)
        return _completion(rewrite_for(prompt) if "Rewritten last question" in prompt else answer_for(prompt))
    if "FAIL_PERMANENT" in prompt:
        from litestar.exceptions import HTTPException

        raise HTTPException(status_code=400, detail="rejected by fake LLM")
    words = answer_for(prompt).split(" ") * int(request.app.state.get("repeat", 1))
    delay = float(request.app.state.get("token_delay", 0.0))

    state = request.app.state

    async def stream() -> AsyncIterator[bytes]:
        import asyncio

        state.streams_started = state.get("streams_started", 0) + 1
        try:
            gate = state.get("gate")  # a threading.Event: after `gate_after` words the stream waits for it
            for i, word in enumerate(words):
                if gate is not None and i == state.get("gate_after", 3):
                    while not gate.is_set():
                        await asyncio.sleep(0.01)
                yield _chunk(word if i == 0 else " " + word)
                if delay:
                    await asyncio.sleep(delay)
        except (asyncio.CancelledError, GeneratorExit):
            # The client closed the stream before the end: it did not drain it.
            state.streams_aborted = state.get("streams_aborted", 0) + 1
            raise
        yield _chunk(None, finish="stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            yield _chunk(None, usage={"prompt_tokens": len(prompt.split()), "completion_tokens": len(words),
                                      "total_tokens": len(prompt.split()) + len(words)})
        yield b"data: [DONE]\n\n"

    return Stream(stream(), media_type="text/event-stream")


def hash_embedding(text: str, dim: int = 64) -> list[float]:
    """A bag-of-words hashing embedding: texts sharing words get similar vectors."""
    vector = np.zeros(dim, dtype=np.float32)
    for word in re.findall(r"\w+", text.lower()):
        vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % dim] += 1.0
    norm = float(np.linalg.norm(vector)) or 1.0
    return (vector / norm).tolist()


@post("/v1/embeddings")
async def embeddings(request: Request[Any, Any, Any]) -> dict[str, Any]:
    body = await request.json()
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    request.app.state.embed_calls = request.app.state.get("embed_calls", 0) + 1
    return {
        "object": "list",
        "model": body.get("model", "fake"),
        "data": [{"object": "embedding", "index": i, "embedding": hash_embedding(t)} for i, t in enumerate(inputs)],
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }


def create_fake_openai() -> Litestar:
    return Litestar(route_handlers=[chat, embeddings])
