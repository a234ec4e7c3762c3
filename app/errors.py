"""API errors and the one place that maps every error to an HTTP response with a stable code."""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.openapi import ResponseSpec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.schemas import ErrorBody
from core.errors import BadRequest, RagError

log = structlog.get_logger("app")


class NotFound(RagError):
    code = "not_found"
    permanent = True


class JobNotFound(NotFound):
    code = "job_not_found"


class InvalidLastEventId(BadRequest):
    code = "invalid_last_event_id"


class JobFinished(RagError):
    code = "job_finished"
    permanent = True


class Overloaded(RagError):
    """Too many questions are waiting: 429 with Retry-After rather than an unbounded queue."""

    code = "overloaded"


_STATUS = {BadRequest: 400, NotFound: 404, JobFinished: 409, Overloaded: 429}
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


_DESCRIBED = {
    400: "Bad request: invalid JSON or fields (`invalid_json`, `invalid_request`, `empty_question`, "
         "`question_too_long`, `invalid_top_k`, `invalid_last_event_id`, `invalid_collection`, `invalid_upload`, "
         "`invalid_entry_id`, `ambiguous_document`)",
    404: "No such job, document or dead job (`job_not_found`, `document_not_found`, `dead_job_not_found`)",
    409: "The job has already finished (`job_finished`)",
    413: "The upload is over RAG_INGEST_MAX_FILE_MB (`payload_too_large`)",
    429: "Too many questions are waiting (`overloaded`); retry after the Retry-After header",
    503: "Redis is unreachable (`redis_unavailable`); retry after the Retry-After header",
}


def documented(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI responses for a route's errors, 400 and 503 always: all have the body
    ``{"error": {"code", "message"}}``. (Litestar would document its own 400 body otherwise,
    which this API never sends.)"""
    return {status: ResponseSpec(data_container=ErrorBody, description=_DESCRIBED[status], generate_examples=False)
            for status in sorted({400, *statuses, 503})}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(
        {"error": {"code": code, "message": message}},
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def handle_rag_error(_: Request[Any, Any, Any], exc: RagError) -> Response[Any]:
    status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 503 if not exc.permanent else 500)
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return error_response(status, exc.code, exc.message, headers=headers)


def handle_validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    details = "; ".join(str(e.get("message", e)) for e in (exc.extra or []) if isinstance(e, dict))
    message = exc.detail if not details else f"{exc.detail}: {details}"
    code = "invalid_json" if "malformed" in message.lower() or "decode" in message.lower() else "invalid_request"
    return error_response(400, code, message)


def handle_http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    if exc.status_code == 400 and _caused_by_bad_json(exc):
        code = "invalid_json"
    return error_response(exc.status_code, code, exc.detail, headers=exc.headers)


def _caused_by_bad_json(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (msgspec.DecodeError, SerializationException)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def handle_redis_down(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("redis_unavailable", error=str(exc))
    return error_response(503, "redis_unavailable", "the job queue (Redis) is unavailable; retry shortly",
                          headers={"Retry-After": "2"})


def handle_unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled_error", error=repr(exc))
    return error_response(500, "internal_error", "internal error")


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    RagError: handle_rag_error,
    ValidationException: handle_validation,
    HTTPException: handle_http,
    RedisConnectionError: handle_redis_down,
    RedisTimeoutError: handle_redis_down,
    Exception: handle_unexpected,
}
