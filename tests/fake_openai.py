"""A small OpenAI-compatible server for fast tests: streams chat completions and serves embeddings.

It answers deterministically from the prompt it receives (quoting source [1]), so tests
can check that retrieval reached the LLM. A real server on loopback, not a patched client.

Faults, for the tests of retries: ``app.state.plan`` lists what the next chat requests get,
one entry each, in order (then ``ok``): ``503`` / ``500`` / ``429`` / ``400`` (that status, at
once), ``stall`` (no response at all), ``stall@N`` (N tokens, then nothing more), ``drop@N``
(N tokens, then the connection breaks). Every chat request is counted in
``app.state.requests`` (its arrival time and body): a test counts attempts. A question with
``HOLD`` in it (any question, with ``app.state.hold_all``) streams ``app.state.hold_after`` tokens
(0: none), then waits until ``app.state.gate`` (a ``threading.Event``) is set; a question with
``FAIL_PERMANENT``, 400. A request that does not stream is a follow-up's rewrite (workers.followups).
``app.state.embed_delay`` (seconds) slows every embeddings request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from litestar import Litestar, Request, Response, post
from litestar.response import Stream

#: "[1] file, page 2 (section): the sentences chosen from source 1" (workers.generator.build_prompt).
_SOURCE_ONE = re.compile(r"^\[1\] [^:\n]*: (.+)$", re.MULTILINE)
#: A stalled response waits this long: longer than any test, shorter than forever.
STALL_S = 600.0


class Dropped(Exception):
    """Raised inside a started stream: uvicorn closes the connection mid-body, as a crashed LLM server does."""


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


def _next_step(state: Any) -> tuple[str, int | None]:
    """This request's entry of the plan: (kind, its number), e.g. ("drop", 3), ("503", None)."""
    plan = state.get("plan") or []
    step = plan.pop(0) if plan else "ok"
    kind, _, n = step.partition("@")
    return kind, int(n) if n else None


def rewrite_for(prompt: str) -> str:
    """A follow-up made standalone, as a model would: the last question, about the first one's subject."""
    questions = [line[len("User: "):] for line in prompt.splitlines() if line.startswith("User: ")]
    return f"{questions[-1]} (regarding: {questions[0]})"


def _completion(content: str) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


async def _hold(state: Any) -> None:
    gate = state.get("gate")
    while gate is not None and not gate.is_set():
        await asyncio.sleep(0.02)


@post("/v1/chat/completions")
async def chat(request: Request[Any, Any, Any]) -> Response[Any] | dict[str, Any]:
    body = await request.json()
    prompt = body["messages"][-1]["content"]
    state = request.app.state
    state.requests = [*state.get("requests", []), (time.monotonic(), body)]
    if not body.get("stream"):
        return _completion(rewrite_for(prompt) if "Rewritten last question" in prompt else answer_for(prompt))
    kind, after = _next_step(state)
    if "FAIL_PERMANENT" in prompt:
        kind = "400"
    if kind.isdigit():
        # retry-after-ms: the openai client's own retries come 20 ms apart, not its default 0.5 s and more.
        return Response({"error": {"message": f"fake LLM answers {kind}", "type": "fake"}}, status_code=int(kind),
                        headers={"retry-after-ms": "20"})
    if kind == "stall" and after is None:
        await asyncio.sleep(STALL_S)
    words = answer_for(prompt).split(" ") * int(state.get("repeat", 1))
    delay = float(state.get("token_delay", 0.0))
    hold_at = int(state.get("hold_after", 0)) if "HOLD" in prompt or state.get("hold_all") else None

    async def stream() -> AsyncIterator[bytes]:
        state.streams_started = state.get("streams_started", 0) + 1
        try:
            for i, word in enumerate(words):
                if i == hold_at:
                    await _hold(state)
                if i == after:
                    if kind == "drop":
                        raise Dropped(f"dropped after {after} tokens")
                    await asyncio.sleep(STALL_S)
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
    await asyncio.sleep(float(request.app.state.get("embed_delay", 0.0)))
    return {
        "object": "list",
        "model": body.get("model", "fake"),
        "data": [{"object": "embedding", "index": i, "embedding": hash_embedding(t)} for i, t in enumerate(inputs)],
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }


def create_fake_openai() -> Litestar:
    return Litestar(route_handlers=[chat, embeddings])
