"""Dead-lettered jobs: list them, and requeue one (same job id, a fresh event stream)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED
from msgspec import Struct

from app.errors import NotFound, documented
from app.jobs import Jobs, links
from app.relay import valid_entry_id
from app.schemas import Links
from core.errors import BadRequest
from core.protocol import DeadLetter


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


class Requeued(Struct, kw_only=True):
    id: str
    status: str = "queued"
    links: Links


class DeadLetterController(Controller):
    path = "/v1/dead"
    tags = ("dead letters",)

    @get("/", summary="Jobs that failed for good, newest first", responses=documented())
    async def list_dead(
        self, jobs: NamedDependency[Jobs], count: Annotated[int, QueryParameter(ge=1, le=1000)] = 100
    ) -> list[DeadJob]:
        entries = await jobs.redis.xrevrange(jobs.keys.dead, count=count)
        return [view(entry_id.decode(), DeadLetter.read(fields)) for entry_id, fields in entries]

    @post("/{entry_id:str}/requeue", status_code=HTTP_202_ACCEPTED, summary="Run a dead job again",
          responses=documented(404))
    async def requeue(self, jobs: NamedDependency[Jobs], entry_id: FromPath[str]) -> Response[Any]:
        if not valid_entry_id(entry_id):
            raise BadRequest(f"{entry_id!r} is not a dead-letter entry id", code="invalid_entry_id")
        job_id = await jobs.requeue_dead(entry_id)
        if job_id is None:
            raise NotFound(f"no dead job {entry_id} (or it carries no job to run)", code="dead_job_not_found")
        return Response(Requeued(id=job_id, links=links(job_id)), status_code=HTTP_202_ACCEPTED)
