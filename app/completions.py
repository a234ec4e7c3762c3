"""A question's job events as an OpenAI chat completion: streamed as chunks, or whole, with its sources.

Sources come first, in OpenAI's and Perplexity's own shapes: the first chunk carries
``search_results`` (every retrieved source: title, url, snippet, file, page, page_end, score), the
last repeats them with ``citations`` (their URLs, ``[n]`` being ``citations[n-1]``) and ``usage``; each
source the answer cites is an ``annotations`` entry of type ``url_citation`` (on ``delta`` in the
chunk whose text closes its first ``[n]``, on ``message`` when not streaming), which Open WebUI shows
as a source. Every ``url`` is this service's ``GET /v1/documents/{id}/pages/{n}``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import msgspec

from app.errors import Failure, openai_error
from app.pages import page_path
from app.relay import KEEPALIVE, until_hangup
from core.protocol import EMPTY_COLLECTION, Cancelled, Done, Error, Event, Restart, Source, Sources, Token

if TYPE_CHECKING:
    from litestar.types import Receive, Scope, Send

    from app.jobs import Jobs
    from core.hub import Item, Subscription

_MARKER = re.compile(r"\[(\d{1,3})\]")
#: Characters a ``[n]`` marker may span: a token that ends inside one is scanned again with the next.
_MARKER_SPAN: Final = 5
_encode = msgspec.json.Encoder().encode

#: How a job that ends in error before its answer began is answered: HTTP status and code by its error code.
_JOB_ERRORS: Final = {EMPTY_COLLECTION: (404, "model_not_found"), "llm_bad_request": (400, "llm_bad_request"),
                      "empty_question": (400, "empty_question"), "llm_unavailable": (503, "llm_unavailable")}


def page_url(base: str, source: Source, collection: str, token: str | None = None) -> str:
    """The URL of a source's page on this service (with a page token, when a key asked: a browser that follows
    the link from a chat client sends no key)."""
    return base + page_path(source.document_id, source.page, collection, token)


def citation_title(source: Source) -> str:
    pages = f"p. {source.page}" if source.page_end <= source.page else f"pp. {source.page}-{source.page_end}"
    return f"{source.title or source.file}, {pages}"


def job_failure(event: Error | Cancelled, model: str) -> Failure:
    """A job that ended before its answer began, as an HTTP error."""
    if isinstance(event, Cancelled):
        return Failure(409, "cancelled", f"the answer was cancelled ({event.reason})")
    status, code = _JOB_ERRORS.get(event.code, (500, event.code))
    message = (f"the model {model!r} names no collection with documents: GET /v1/models lists them"
               if event.code == EMPTY_COLLECTION else event.message)
    headers = {"Retry-After": "2"} if status == 503 else None
    return Failure(status, code, message, headers, "model" if code == "model_not_found" else None)


class Translation:
    """One answer's events as OpenAI chunks (or one completion): pure, no I/O."""

    def __init__(self, *, completion_id: str, model: str, created: int, url: Callable[[Source], str],
                 include_usage: bool = False, source_list: bool = False) -> None:
        self.id = completion_id
        self.model = model
        self.created = created
        self._url = url
        self._include_usage = include_usage
        #: Add the cited sources to the text, as a markdown list of links: for clients that show no annotations.
        self._source_list = source_list
        self.sources: list[Source] = []
        #: The content sent so far, and the markers annotated in it (by source number).
        self.text = ""
        self._annotated: set[int] = set()
        #: After a restart: the answer as it was sent, which the new one must repeat before it goes on.
        self._replay: str | None = None
        self._fresh = ""

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}

    def search_results(self) -> list[dict[str, Any]]:
        return [{"n": s.n, "title": citation_title(s), "url": self._url(s), "snippet": s.snippet, "file": s.file,
                 "page": s.page, "page_end": s.page_end, "score": s.score, "document_id": s.document_id,
                 "section": s.section} for s in self.sources]

    def opening(self, event: Sources) -> dict[str, Any]:
        """The first chunk: the role, and every source."""
        self.sources = event.sources
        return self._chunk({"role": "assistant", "content": ""}, search_results=self.search_results())

    def token(self, event: Token) -> dict[str, Any] | None:
        """A chunk of text, with an annotation for each source whose first ``[n]`` it completes."""
        text = event.text
        if self._replay is not None:
            text = self._after_restart(text)
            if not text:
                return None
        start = len(self.text)
        self.text += text
        delta: dict[str, Any] = {"content": text}
        annotations = self._annotations(self.text, max(0, start - _MARKER_SPAN), start)
        if annotations:
            delta["annotations"] = annotations
        return self._chunk(delta)

    def _after_restart(self, text: str) -> str:
        """What of a retaken answer's text is new: the part beyond what was sent before it broke off. An answer
        that differs from what was sent cannot be taken back: RestartedDifferently."""
        assert self._replay is not None
        self._fresh += text
        if self._replay.startswith(self._fresh):
            return ""
        if not self._fresh.startswith(self._replay):
            raise RestartedDifferently
        new = self._fresh[len(self._replay):]
        self._replay = None
        return new

    def restart(self) -> None:
        """The job was taken over by another worker, which answers again from the start."""
        if self.text:
            self._replay, self._fresh = self.text, ""

    def _annotations(self, text: str, scan_from: int, new_from: int) -> list[dict[str, Any]]:
        out = []
        by_n = {s.n: s for s in self.sources}
        for match in _MARKER.finditer(text, scan_from):
            n = int(match.group(1))
            if match.end() <= new_from or n in self._annotated or n not in by_n:
                continue
            self._annotated.add(n)
            out.append(self._annotation(by_n[n], match.start(), match.end()))
        return out

    def _annotation(self, source: Source, start: int, end: int) -> dict[str, Any]:
        return {"type": "url_citation", "url_citation": {
            "url": self._url(source), "title": citation_title(source), "start_index": start, "end_index": end}}

    def _uncited(self, done: Done, answer: str) -> list[dict[str, Any]]:
        """Sources the answer relies on without a ``[n]`` of theirs in it: annotated over the whole answer."""
        return [self._annotation(s, 0, len(answer)) for s in done.citations if s.n not in self._annotated]

    def _usage(self, done: Done) -> dict[str, int]:
        u = done.usage
        return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                "total_tokens": u.prompt_tokens + u.completion_tokens}

    def listed(self, done: Done) -> str:
        """The cited sources as a markdown list of links, to end the answer with (when asked for)."""
        if not self._source_list or not done.citations:
            return ""
        return "\n\nSources:\n" + "".join(f"\n- [{s.n}] [{citation_title(s)}]({self._url(s)})" for s in done.citations)

    def closing(self, done: Done) -> list[dict[str, Any]]:
        """The last chunk (sources again, their URLs as ``citations``, usage), and OpenAI's separate usage
        chunk instead when the client asked for it (``stream_options.include_usage``)."""
        listed = self.listed(done)
        delta: dict[str, Any] = {"content": listed} if listed else {}
        annotations = self._uncited(done, self.text)
        if annotations:
            delta["annotations"] = annotations
        extra: dict[str, Any] = {"search_results": self.search_results(),
                                 "citations": [self._url(s) for s in self.sources]}
        if not self._include_usage:
            extra["usage"] = self._usage(done)
        last = self._chunk(delta, "stop", **extra)
        if not self._include_usage:
            return [last]
        usage = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "choices": [], "usage": self._usage(done)}
        return [last, usage]

    def completion(self, done: Done) -> dict[str, Any]:
        """The whole answer, not streamed."""
        self.text = ""
        annotations = self._annotations(done.answer, 0, 0) + self._uncited(done, done.answer)
        message = {"role": "assistant", "content": done.answer + self.listed(done), "refusal": None,
                   "annotations": annotations}
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
                "usage": self._usage(done), "search_results": self.search_results(),
                "citations": [self._url(s) for s in self.sources]}


class RestartedDifferently(Exception):
    """A retaken answer does not repeat what was already streamed of it: the stream cannot go on."""


def data(chunk: dict[str, Any]) -> bytes:
    return b"data: " + _encode(chunk) + b"\n\n"


DONE: Final = b"data: [DONE]\n\n"
_SSE_HEADERS: Final = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                       (b"x-accel-buffering", b"no")]
_JSON_HEADERS: Final = [(b"content-type", b"application/json")]


class ChatRelay:
    """The ASGI response of ``POST /v1/chat/completions``: the job's events, translated. Nothing is sent before
    the job's first event, so a job that fails at once (an unknown model) is an HTTP error; a client that
    hangs up cancels the job."""

    def __init__(self, jobs: Jobs, job_id: str, translation: Translation, *, stream: bool,
                 keepalive_s: float) -> None:
        self._jobs = jobs
        self._job_id = job_id
        self._t = translation
        self._stream = stream
        self._keepalive_s = keepalive_s
        self._headers = [(b"x-job-id", job_id.encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await until_hangup(receive, self._respond(send), lambda: self._jobs.cancel_soon(self._job_id))

    async def _respond(self, send: Send) -> bool:
        sub = await self._jobs.follow(self._job_id, sse=self._stream)
        try:
            return await (self._streamed(sub, send) if self._stream else self._whole(sub, send))
        finally:
            self._jobs.unfollow(sub)

    async def _whole(self, sub: Subscription, send: Send) -> bool:
        while (item := await sub.queue.get()) is not None:
            event = item.event()
            if isinstance(event, Sources):
                self._t.sources = event.sources
            elif isinstance(event, Done):
                await self._send(send, 200, _JSON_HEADERS, _encode(self._t.completion(event)))
                return True
            elif isinstance(event, Error | Cancelled):
                await self._fail(send, job_failure(event, self._t.model))
                return True
        await self._fail(send, _UNAVAILABLE)
        return False

    async def _streamed(self, sub: Subscription, send: Send) -> bool:
        started = False
        held = b""  # the opening chunk of a search that found nothing: an error may follow (an empty collection)
        while (item := await self._next(sub, send, started)) is not None:
            event = item.event()
            if not started and isinstance(event, Error | Cancelled):
                await self._fail(send, job_failure(event, self._t.model))
                return True
            try:
                body, ended = self._chunks(event)
            except RestartedDifferently:
                body, ended = data(openai_error(_RESTARTED)), True
            if not started and isinstance(event, Sources) and not event.sources:
                held = body
                continue
            body, held = held + body, b""
            if body and not started:
                await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS + self._headers})
                started = True
            if body or ended:
                await send({"type": "http.response.body", "body": body, "more_body": not ended})
            if ended:
                return True
        # The hub stopped (the API is shutting down): nobody will read the rest of this answer.
        if started:
            await send({"type": "http.response.body", "body": data(openai_error(_UNAVAILABLE)), "more_body": False})
        else:
            await self._fail(send, _UNAVAILABLE)
        return False

    def _chunks(self, event: Event) -> tuple[bytes, bool]:
        """What an event becomes in the stream, and whether the stream ends with it."""
        if isinstance(event, Sources):
            return data(self._t.opening(event)), False
        if isinstance(event, Token):
            chunk = self._t.token(event)
            return (data(chunk) if chunk else b""), False
        if isinstance(event, Restart):
            self._t.restart()
            return b"", False
        if isinstance(event, Done):
            return b"".join(map(data, self._t.closing(event))) + DONE, True
        if isinstance(event, Error | Cancelled):
            return data(openai_error(job_failure(event, self._t.model))), True
        return b"", False

    async def _next(self, sub: Subscription, send: Send, started: bool) -> Item | None:
        """The next event; once the stream has begun, a keepalive comment every keepalive_s meanwhile."""
        while True:
            if not started:
                return await sub.queue.get()
            try:
                async with asyncio.timeout(self._keepalive_s):
                    return await sub.queue.get()
            except TimeoutError:
                await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})

    async def _fail(self, send: Send, failure: Failure) -> None:
        headers = list(_JSON_HEADERS) + [(k.lower().encode(), v.encode()) for k, v in (failure.headers or {}).items()]
        await self._send(send, failure.status, headers, _encode(openai_error(failure)))

    async def _send(self, send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers + self._headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


_UNAVAILABLE: Final = Failure(503, "unavailable", "the API process is shutting down: ask again", {"Retry-After": "1"})
_RESTARTED: Final = Failure(500, "answer_restarted",
                            "the worker answering was replaced and its new answer differs from what was sent: ask again")
