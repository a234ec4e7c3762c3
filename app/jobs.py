"""Jobs as the API sees them: submitting queries, cancelling, a job's status, and its events as SSE."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Literal, cast

from app.auth import Principal
from app.errors import JobFinished, JobNotFound, NotFound, Overloaded
from app.relay import Relay
from app.schemas import ErrorInfo, JobStatus, JobView, Links, QueryRequest
from core.apikeys import OWNER
from core.errors import BadRequest, RagError
from core.keys import Keys, valid_job_id
from core.payload import DEFAULT_COLLECTION
from core.protocol import (
    PAGE_NOT_FOUND,
    UNSUPPORTED_PARAMETER,
    DeadLetter,
    Done,
    Error,
    Event,
    EventKind,
    Interactive,
    Query,
    decode_job,
    job_fields,
    new_job,
    read_event,
)
from core.queue import CancelResult, JobQueue

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from app.tokens import LinkTokens
    from core.hub import EventHub, Subscription
    from core.settings import Settings

#: A job's status by the kind of its last event: any other kind means it is running.
_STATUS: dict[str, JobStatus] = {
    EventKind.DONE: "done", EventKind.ERROR: "failed", EventKind.CANCELLED: "cancelled",
}


#: Errors of a job whose client waits for its result, as the API's errors (others: 503, retry).
_JOB_ERRORS: dict[str, type[RagError]] = {UNSUPPORTED_PARAMETER: BadRequest, PAGE_NOT_FOUND: NotFound}


_OWNER = OWNER.encode()


def links(job_id: str, events_token: str | None = None) -> Links:
    """A job's URLs; its events' with the job's events token, when a key created it (for browsers' EventSource)."""
    events = f"/v1/queries/{job_id}/events"
    return Links(self=f"/v1/queries/{job_id}", events=f"{events}?token={events_token}" if events_token else events)


async def job_links(tokens: LinkTokens, job_id: str, principal: Principal) -> Links:
    """A job's URLs, its events' with a fresh events token when a key asks."""
    key_id = principal.key_id
    return links(job_id, await tokens.issue(job_id, key_id) if key_id and principal.job_id is None else None)


class Jobs:
    def __init__(self, redis: Redis, settings: Settings, hub: EventHub, tokens: LinkTokens) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.redis.prefix)
        self._hub = hub
        self.tokens = tokens
        self._queue = JobQueue(redis, self.keys, settings.limits)
        self._background: set[asyncio.Task[object]] = set()

    def events(self, job_id: str, *, after: str = "0-0", on_abandon: Callable[[], None] | None = None,
               headers: Mapping[str, str] | None = None) -> Relay:
        """The job's events after entry ``after``, as an SSE response relayed through the process's hub."""
        return Relay(self._hub, self.redis, self.keys.events(job_id), after=after,
                     keepalive_s=self.settings.api.keepalive_s, on_abandon=on_abandon, headers=headers)

    def question(self, text: str) -> str:
        """A question as asked, stripped; BadRequest for one empty or too long."""
        limit = self.settings.limits.question_max_chars
        question = text.strip()
        if not question:
            raise BadRequest("the question is empty", code="empty_question")
        if len(question) > limit:
            raise BadRequest(f"the question has {len(question)} characters; the limit is {limit}",
                             code="question_too_long")
        return question

    def top_k(self, top_k: int | None) -> int:
        limits = self.settings.limits
        top_k = top_k if top_k is not None else limits.top_k_default
        if not 1 <= top_k <= limits.top_k_max:
            raise BadRequest(f"top_k must be between 1 and {limits.top_k_max}", code="invalid_top_k")
        return top_k

    def validate(self, request: QueryRequest) -> Query:
        return Query(question=self.question(request.question), top_k=self.top_k(request.top_k),
                     collection=request.collection or None)

    async def submit_query(self, request: QueryRequest, principal: Principal) -> str:
        query = self.validate(request)
        principal.check_read(query.collection or DEFAULT_COLLECTION)
        return await self.submit(query, {"question": query.question}, principal)

    async def submit(self, payload: Interactive, record: dict[str, str | int], principal: Principal) -> str:
        """Put a job on the queries stream with its record, which names the key that asked (its owner);
        Overloaded when too many wait already."""
        job = new_job(payload)
        if principal.key_id is not None:
            record = {**record, OWNER: principal.key_id}
        # Backpressure: acknowledged jobs are deleted, so the stream's length is waiting + pending.
        limit = self.settings.limits.max_backlog
        backlog = await self._queue.submit(job, self.keys.queries, record, max_backlog=limit)
        if backlog is not None:
            raise Overloaded(f"{backlog} questions are waiting; the limit is {limit}. Retry shortly.")
        return job.id

    async def outcome(self, job_id: str) -> list[Event]:
        """A job's events, waited for up to its terminal one (for jobs whose client wants the whole result)."""
        async with aclosing(self._hub.follow(self.keys.events(job_id))) as entries:
            return [entry.event() async for entry in entries]

    async def result(self, job_id: str) -> list[Event]:
        """The events of a job that ended ``done``; its error, raised, otherwise."""
        events = await self.outcome(job_id)
        last = events[-1] if events else None
        if isinstance(last, Done):
            return events
        if isinstance(last, Error):
            raise _JOB_ERRORS.get(last.code, RagError)(last.message, code=last.code)
        raise RagError("the job was cancelled", code="cancelled")

    async def follow(self, job_id: str, *, sse: bool = False) -> Subscription:
        """Subscribe to a job's events from its first (for a relay of the API's own; ``sse``: as an SSE response)."""
        return await self._hub.subscribe(self.keys.events(job_id), "0-0", sse=sse)

    def unfollow(self, subscription: Subscription) -> None:
        self._hub.unsubscribe(subscription)

    async def job_links(self, job_id: str, principal: Principal) -> Links:
        return await job_links(self.tokens, job_id, principal)

    async def cancel(self, job_id: str, principal: Principal | None = None) -> Literal["cancelled", "cancelling"]:
        """'cancelled' (it had not started), 'cancelling' (its worker stops it now). Another key's job is unknown
        to ``principal``; None: the API's own cancel (a client that hung up)."""
        if not valid_job_id(job_id):
            raise JobNotFound(f"no job with id {job_id!r}")
        result = await self._queue.cancel(job_id, principal.key_id if principal else None)
        if result is CancelResult.UNKNOWN:
            raise JobNotFound(f"no job with id {job_id!r} (unknown, or expired)")
        if result is CancelResult.FINISHED:
            raise JobFinished(f"job {job_id} has already finished")
        return "cancelled" if result is CancelResult.NOT_STARTED else "cancelling"

    def cancel_soon(self, job_id: str) -> None:
        """Cancel from a request that is itself going away (a client that disconnected)."""
        task = asyncio.get_running_loop().create_task(self.cancel(job_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def requeue_dead(self, entry_id: str, allowed: Callable[[DeadLetter], bool]) -> str | None:
        """Put a dead job back on its stream under the same id, with a fresh event stream; None for one that is
        not there, carries no job, or is not ``allowed``."""
        entries = await self.redis.xrange(self.keys.dead, min=entry_id, max=entry_id)
        letter = DeadLetter.read(entries[0][1]) if entries else None
        if letter is None or letter.job is None or not allowed(letter):
            return None
        job = decode_job(letter.job)
        stream = letter.stream or self.keys.queries
        if stream not in (self.keys.queries, self.keys.ingest):
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            # Its old events end in `error`: a new run starts a new stream for the same id.
            pipe.delete(self.keys.events(job.id), self.keys.cancel(job.id))
            pipe.expire(self.keys.record(job.id), self.settings.limits.events_ttl_s)
            pipe.xadd(stream, job_fields(job))
            pipe.xdel(self.keys.dead, entry_id)
            await pipe.execute()
        return job.id

    async def require(self, job_id: str, principal: Principal) -> dict[bytes, bytes]:
        """The job's record; JobNotFound for a job that does not exist, and for one ``principal`` may not see
        (another key's: whether it exists is not told)."""
        if not valid_job_id(job_id):
            raise JobNotFound(f"no job with id {job_id!r}")
        record = cast("dict[bytes, bytes]", await self.redis.hgetall(self.keys.record(job_id)))
        seen = principal.owns(record.get(_OWNER)) and principal.job_id in (None, job_id)
        if not record or not seen:
            raise JobNotFound(f"no job with id {job_id!r} (unknown, or expired)")
        return record

    async def view(self, job_id: str, principal: Principal) -> JobView:
        record = await self.require(job_id, principal)
        view = JobView(
            id=job_id,
            kind=record.get(b"kind", b"query").decode(),
            status="queued",
            created_ms=int(record.get(b"created_ms", b"0")),
            question=record[b"question"].decode() if b"question" in record else None,
            links=await self.job_links(job_id, principal),
        )
        last = await self.redis.xrevrange(self.keys.events(job_id), count=1)
        if not last:
            return view
        entry = read_event(*last[0])
        view.status = _STATUS.get(entry.kind, "running")
        if entry.terminal:
            event = entry.event()
            if isinstance(event, Done):
                view.answer = event.answer
                view.citations = event.citations
                view.usage = event.usage
                view.timings = event.timings
                if view.kind == "ingest":
                    view.chunks = event.chunks
            elif isinstance(event, Error):
                view.error = ErrorInfo(code=event.code, message=event.message)
        return view
