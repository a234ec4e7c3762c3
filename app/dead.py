"""Dead-lettered jobs: list them, and requeue one (same job id, a fresh event stream). Admin keys only, and
only the dead jobs of their collections (a job without one, an embedding, or unreadable: keys of every
collection only)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED
from msgspec import Struct

from app.auth import Principal, principal
from app.errors import NotFound, documented
from app.jobs import Jobs
from app.relay import valid_entry_id
from app.schemas import Links
from core.errors import BadRequest
from core.payload import DEFAULT_COLLECTION
from core.protocol import DeadLetter, Embed, decode_job


class DeadJob(Struct, kw_only=True, omit_defaults=True):
    entry_id: str
    job_id: str | None = None
    stream: str
    code: str
    error: str
    deliveries: int
    dead_ms: int
    consumer: str | None = None


def view(entry_id: str, letter: DeadLetter) -> DeadJob:
    return DeadJob(entry_id=entry_id, job_id=letter.job_id, stream=letter.stream, code=letter.code, error=letter.error,
                   deliveries=letter.deliveries, dead_ms=letter.dead_ms, consumer=letter.consumer or None)


def collection_of(letter: DeadLetter) -> str | None:
    """The collection a dead job worked on; None when it has none (an embedding) or cannot be read."""
    if letter.job is None:
        return None
    try:
        payload = decode_job(letter.job).payload
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return None if isinstance(payload, Embed) else payload.collection or DEFAULT_COLLECTION


def visible(letter: DeadLetter, asking: Principal) -> bool:
    collection = collection_of(letter)
    return asking.collections is None if collection is None else asking.reads(collection)


class Requeued(Struct, kw_only=True):
    id: str
    status: str = "queued"
    links: Links


class DeadLetterController(Controller):
    path = "/v1/dead"
    tags = ("dead letters",)

    @get("/", summary="Jobs that failed for good, newest first (an admin key's collections')",
         responses=documented(403))
    async def list_dead(
        self, jobs: NamedDependency[Jobs], request: Request[Any, Any, Any],
        count: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> list[DeadJob]:
        asking = principal(request)
        asking.check_admin()
        found: list[DeadJob] = []
        before = "+"
        while len(found) < count:  # a key of some collections: read on past the others' dead jobs
            entries = await jobs.redis.xrevrange(jobs.keys.dead, max=before, count=count)
            for entry_id, fields in entries:
                letter = DeadLetter.read(fields)
                if visible(letter, asking) and len(found) < count:
                    found.append(view(entry_id.decode(), letter))
            if len(entries) < count:
                break
            before = "(" + entries[-1][0].decode()
        return found

    @post("/{entry_id:str}/requeue", status_code=HTTP_202_ACCEPTED, summary="Run a dead job again",
          responses=documented(403, 404))
    async def requeue(self, jobs: NamedDependency[Jobs], entry_id: FromPath[str],
                      request: Request[Any, Any, Any]) -> Response[Any]:
        asking = principal(request)
        asking.check_admin()
        if not valid_entry_id(entry_id):
            raise BadRequest(f"{entry_id!r} is not a dead-letter entry id", code="invalid_entry_id")
        job_id = await jobs.requeue_dead(entry_id, lambda letter: visible(letter, asking))
        if job_id is None:
            raise NotFound(f"no dead job {entry_id} (or it carries no job to run)", code="dead_job_not_found")
        return Response(Requeued(id=job_id, links=await jobs.job_links(job_id, asking)), status_code=HTTP_202_ACCEPTED)
