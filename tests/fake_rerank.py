"""A small rerank server for tests: ``POST /rerank`` in Cohere's and in Hugging Face TEI's shape.

Cohere, Jina, Infinity and vLLM take ``{"model", "query", "documents", "top_n"}`` and answer
``{"results": [{"index", "relevance_score"}]}``; TEI takes ``{"query", "texts"}`` and answers
``[{"index", "score"}]``. Both replies are sorted best first, as the real servers sort them.
The score is :func:`relevance`: deterministic, so a test can predict the order. A real server
on loopback (served by ``tests.servers.ThreadedUvicorn``), not a patched client.

The :class:`RerankRecorder` keeps every request and tells the server how to misbehave.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from typing import Any

from litestar import Litestar, Request, post
from litestar.response import Response
from msgspec import Struct, field

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> set[str]:
    """Lowercase words longer than two characters."""
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2}


def relevance(query: str, document: str, index: int, count: int) -> float:
    """The fraction of the query's words found in the document, plus a tie-breaker (under 1e-5)
    that favours the earlier of two documents scored alike."""
    asked = words(query)
    found = len(asked & words(document)) / len(asked) if asked else 0.0
    return found + 1e-6 * (count - index) / max(count, 1)


class Recorded(Struct):
    """One request as the server got it."""

    path: str
    #: Lowercase header names.
    headers: dict[str, str]
    body: Any
    #: What it answered: HTTP status (None while it has not answered) and the reply's JSON.
    status: int | None = None
    reply: Any = None


class RerankRecorder(Struct):
    """The server's record and switches; tests set the switches between requests."""

    requests: list[Recorded] = field(default_factory=list)
    #: When set, requests without ``Authorization: Bearer <api_key>`` get a 401.
    api_key: str | None = None
    #: Answer every request with this HTTP status (and an error body) instead of scores.
    fail_status: int | None = None
    #: Answer 500 to requests for this query only.
    fail_query: str | None = None
    #: Sleep this long before answering (cut short by :meth:`release`).
    stall_s: float = 0.0
    #: Answer these bytes verbatim (status 200) instead of scores.
    raw_reply: bytes | None = None
    #: Indexes left out of the reply.
    omit: set[int] = field(default_factory=set)
    #: Results appended to the reply as they are (unknown indexes, missing scores).
    extra: list[dict[str, Any]] = field(default_factory=list)
    #: TEI only: as TEI does, refuse (413) a query and text longer than this many words (for
    #: tokens) unless the request asks for ``"truncate": true``.
    tei_max_words: int | None = None
    released: threading.Event = field(default_factory=threading.Event)

    def reset(self) -> None:
        self.release()
        fresh = RerankRecorder()
        for name in self.__struct_fields__:
            setattr(self, name, getattr(fresh, name))

    def release(self) -> None:
        """End every stall now (before the server stops, so that it does not wait for them)."""
        self.released.set()

    @property
    def queries(self) -> list[str]:
        return [str(r.body.get("query")) for r in self.requests if isinstance(r.body, dict)]


def _results(recorder: RerankRecorder, query: str, texts: list[str], key: str) -> list[dict[str, Any]]:
    scored = [{"index": i, key: relevance(query, t, i, len(texts))} for i, t in enumerate(texts)]
    scored.sort(key=lambda r: -r[key])
    return [r for r in scored if r["index"] not in recorder.omit]


@post("/rerank")
async def rerank(request: Request[Any, Any, Any]) -> Response[bytes]:
    recorder: RerankRecorder = request.app.state.recorder
    raw = await request.body()
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")
    entry = Recorded(path=request.url.path, headers={k.lower(): v for k, v in request.headers.items()}, body=body)
    recorder.requests.append(entry)

    def reply(status: int, content: Any) -> Response[bytes]:
        entry.status, entry.reply = status, content
        return Response(json.dumps(content).encode(), status_code=status, media_type="application/json")

    if recorder.stall_s:
        deadline = time.monotonic() + recorder.stall_s
        while time.monotonic() < deadline and not recorder.released.is_set():
            await asyncio.sleep(0.01)
    if recorder.api_key is not None and entry.headers.get("authorization") != f"Bearer {recorder.api_key}":
        return reply(401, {"message": "invalid api token"})
    if recorder.fail_status is not None:
        return reply(recorder.fail_status, {"message": "the fake reranker was told to fail"})
    if recorder.fail_query is not None and isinstance(body, dict) and body.get("query") == recorder.fail_query:
        return reply(500, {"message": "the fake reranker was told to fail this query"})
    if recorder.raw_reply is not None:
        entry.status = 200
        return Response(recorder.raw_reply, status_code=200, media_type="application/json")
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        return reply(422, {"message": "a JSON object with a 'query' string is expected"})
    query = body["query"]
    if isinstance(body.get("documents"), list):  # Cohere, Jina, Infinity, vLLM
        results = _results(recorder, query, body["documents"], "relevance_score")
        top_n = body.get("top_n")
        if isinstance(top_n, int):
            results = results[:top_n]
        return reply(200, {"id": "fake-rerank", "results": results + recorder.extra,
                           "meta": {"billed_units": {"search_units": 1}}})
    if isinstance(body.get("texts"), list):  # Hugging Face Text Embeddings Inference
        limit = recorder.tei_max_words
        if limit is not None and body.get("truncate") is not True:
            longest = max((len(query.split()) + len(t.split()) for t in body["texts"]), default=0)
            if longest > limit:
                return reply(413, {"error": f"Input validation error: `inputs` must have less than {limit} "
                                            f"tokens. Given: {longest}", "error_type": "Validation"})
        return reply(200, _results(recorder, query, body["texts"], "score") + recorder.extra)
    return reply(422, {"message": "'documents' (Cohere) or 'texts' (TEI) is expected"})


def create_fake_rerank(recorder: RerankRecorder) -> Litestar:
    app = Litestar(route_handlers=[rerank])
    app.state.recorder = recorder
    return app
