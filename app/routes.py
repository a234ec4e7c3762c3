"""HTTP routes: queries as jobs, the one-shot /v1/ask stream, and health."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED

from app.auth import principal
from app.errors import InvalidLastEventId, documented
from app.jobs import Jobs
from app.relay import Relay, valid_entry_id
from app.schemas import Accepted, Cancelling, Health, JobView, QueryRequest
from core.heartbeats import alive_workers

SSE = "text/event-stream"


class QueryController(Controller):
    path = "/v1"
    tags = ("queries",)

    @post("/queries", status_code=HTTP_202_ACCEPTED, summary="Submit a question; answer it as a job",
          responses=documented(429))
    async def submit(self, jobs: NamedDependency[Jobs], data: JSONBody[QueryRequest],
                     request: Request[Any, Any, Any]) -> Response[Accepted]:
        asking = principal(request)
        job_id = await jobs.submit_query(data, asking)
        return Response(
            Accepted(id=job_id, links=await jobs.job_links(job_id, asking)),
            status_code=HTTP_202_ACCEPTED,
            headers={"Location": f"/v1/queries/{job_id}"},
        )

    @get("/queries/{job_id:str}", summary="A job's status, and its answer once done", responses=documented(404))
    async def status(self, jobs: NamedDependency[Jobs], job_id: FromPath[str], request: Request[Any, Any, Any]) -> JobView:
        return await jobs.view(job_id, principal(request))

    @get("/queries/{job_id:str}/events", media_type=SSE, summary="The job's events as Server-Sent Events (resumable)",
         responses=documented(404))
    async def events(
        self,
        jobs: NamedDependency[Jobs],
        job_id: FromPath[str],
        request: Request[Any, Any, Any],
        last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID", required=False)] = None,
        after: Annotated[str | None, QueryParameter(name="after", required=False)] = None,
        token: Annotated[str | None, QueryParameter(name="token", required=False, description=(
            "The job's events token (links.events carries it): for browsers, whose EventSource sends no key"))] = None,
    ) -> Relay:
        await jobs.require(job_id, principal(request))
        cursor = last_event_id if last_event_id is not None else after
        if cursor is not None:
            cursor = cursor.strip()
            if not valid_entry_id(cursor):
                raise InvalidLastEventId(
                    f"Last-Event-ID {cursor[:64]!r} is not an event id of this service (expected like 1700000000000-0)"
                )
        return jobs.events(job_id, after=cursor or "0-0")

    @delete("/queries/{job_id:str}", status_code=HTTP_202_ACCEPTED, summary="Cancel a job: its answer stops now",
            responses=documented(404, 409))
    async def cancel(self, jobs: NamedDependency[Jobs], job_id: FromPath[str],
                     request: Request[Any, Any, Any]) -> Response[Cancelling]:
        asking = principal(request)
        status = await jobs.cancel(job_id, asking)
        return Response(Cancelling(id=job_id, status=status, links=await jobs.job_links(job_id, asking)),
                        status_code=HTTP_202_ACCEPTED)

    @post("/ask", status_code=200, media_type=SSE, summary="Ask and stream the answer as Server-Sent Events in one request",
          responses=documented(429))
    async def ask(self, jobs: NamedDependency[Jobs], data: JSONBody[QueryRequest],
                  request: Request[Any, Any, Any]) -> Relay:
        job_id = await jobs.submit_query(data, principal(request))
        # A client that hangs up before the end cancels the job: nobody would read the answer.
        return jobs.events(job_id, on_abandon=lambda: jobs.cancel_soon(job_id),
                           headers={"X-Job-Id": job_id, "Location": f"/v1/queries/{job_id}"})


@get("/healthz", tags=["health"], summary="The process is up")
async def healthz() -> Health:
    return Health(status="ok")


@get("/readyz", tags=["health"], summary="Redis is reachable, the consumer groups exist, workers are alive",
     responses={503: ResponseSpec(data_container=Health, description="Not ready: the checks say which part is not",
                                  generate_examples=False)})
async def readyz(jobs: NamedDependency[Jobs]) -> Response[Health]:
    checks: dict[str, Any] = {}
    try:
        await jobs.redis.ping()
        checks["redis"] = "ok"
        groups = await jobs.redis.xinfo_groups(jobs.keys.queries)
        checks["consumer_group"] = "ok" if groups else "missing"
        checks["queued"] = int(await jobs.redis.xlen(jobs.keys.queries))
        workers = await alive_workers(jobs.redis, jobs.keys)
        checks["workers"] = len(workers)
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks.setdefault("redis", f"error: {exc}")
        checks.setdefault("consumer_group", "unknown")
    ok = checks.get("redis") == "ok" and checks.get("consumer_group") == "ok" and checks.get("workers", 0) > 0
    return Response(Health(status="ok" if ok else "unavailable", checks=checks), status_code=200 if ok else 503)
