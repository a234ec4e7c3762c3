"""API errors and the one place that maps every error to an HTTP response with a stable code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec
import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.openapi import ResponseSpec
from msgspec import Struct
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


class DocumentNotFound(NotFound):
    code = "document_not_found"


class InvalidLastEventId(BadRequest):
    code = "invalid_last_event_id"


class JobFinished(RagError):
    code = "job_finished"
    permanent = True


class ModelNotFound(NotFound):
    """An OpenAI-style ``model`` that names no collection with documents."""

    code = "model_not_found"


class UnsupportedParameter(BadRequest):
    """A request parameter this service does not serve (``n`` > 1, ``tools``...): refused, naming it."""

    code = "unsupported_parameter"

    def __init__(self, param: str, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.param = param


class Overloaded(RagError):
    """Too many questions are waiting: 429 with Retry-After rather than an unbounded queue."""

    code = "overloaded"


class Unauthorized(RagError):
    """No API key, or one that is not (or no longer) a key: 401. Codes ``missing_api_key``, ``invalid_api_key``,
    ``invalid_events_token``, ``events_token_expired``, ``invalid_page_token``, ``page_token_expired``."""

    code = "invalid_api_key"
    permanent = True


class Forbidden(RagError):
    """A valid key without the right for this: another collection, writing, administering. 403."""

    code = "forbidden"
    permanent = True


class RateLimited(RagError):
    """The key has used its requests per second (RAG_LIMITS_KEY_RPS): 429, Retry-After in whole seconds."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


_STATUS = {BadRequest: 400, Unauthorized: 401, Forbidden: 403, NotFound: 404, JobFinished: 409, Overloaded: 429,
           RateLimited: 429}
_HTTP_CODES = {
    400: "bad_request",
    401: "invalid_api_key",
    403: "forbidden",
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
         "`invalid_entry_id`, `ambiguous_document`, `invalid_key_name`, `invalid_key_limit`)",
    401: "No API key (`missing_api_key`), or not a valid one (`invalid_api_key`); for a job's events, an events "
         "token that is wrong (`invalid_events_token`) or expired (`events_token_expired`); for a cited page, a page "
         "token that is wrong (`invalid_page_token`) or expired (`page_token_expired`)",
    403: "The key may not do this: another collection, writing, administering (`forbidden`)",
    404: "No such job, document, page, dead job, model or API key (`job_not_found`, `document_not_found`, "
         "`page_not_found`, `dead_job_not_found`, `model_not_found`, `key_not_found`); another key's job is not "
         "found either",
    409: "The job has already finished (`job_finished`)",
    413: "The upload is over RAG_INGEST_MAX_FILE_MB (`payload_too_large`)",
    429: "The key used its requests per second (`rate_limited`), or too many questions are waiting (`overloaded`); "
         "retry after the Retry-After header",
    503: "Redis is unreachable (`redis_unavailable`); retry after the Retry-After header",
}


def documented(*statuses: int, body: type[Struct] = ErrorBody) -> dict[int, ResponseSpec]:
    """OpenAPI responses for a route's errors, 400, 401, 429 and 503 always: all have the body ``body``,
    ``{"error": {"code", "message"}}`` unless told otherwise. (Litestar would document its own 400 body
    otherwise, which this API never sends.)"""
    return {status: ResponseSpec(data_container=body, description=_DESCRIBED[status], generate_examples=False)
            for status in sorted({400, 401, 429, *statuses, 503})}


class Failure(NamedTuple):
    """An error as the client is told of it, whatever the body's shape."""

    status: int
    code: str
    message: str
    headers: dict[str, str] | None = None
    #: The request parameter at fault, where there is one (OpenAI's ``param``).
    param: str | None = None


def _ours(failure: Failure) -> Response[Any]:
    """This API's own shape: ``{"error": {"code", "message"}}``."""
    return Response({"error": {"code": failure.code, "message": failure.message}}, status_code=failure.status,
                    media_type=MediaType.JSON, headers=failure.headers)


#: OpenAI's error ``type`` by HTTP status.
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def openai_error(failure: Failure) -> dict[str, Any]:
    """OpenAI's error body, ``{"error": {"message", "type", "param", "code"}}``, with our stable code."""
    kind = _OPENAI_TYPES.get(failure.status, "server_error" if failure.status >= 500 else "invalid_request_error")
    return {"error": {"message": failure.message, "type": kind, "param": failure.param, "code": failure.code}}


def _openai(failure: Failure) -> Response[Any]:
    return Response(openai_error(failure), status_code=failure.status, media_type=MediaType.JSON,
                    headers=failure.headers)


def rag_failure(exc: RagError) -> Failure:
    status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 503 if not exc.permanent else 500)
    headers = {"Retry-After": str(getattr(exc, "retry_after_s", 1))} if status in (429, 503) else None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="rag-stream"'}
    return Failure(status, exc.code, exc.message, headers, getattr(exc, "param", None))


def _validation(exc: ValidationException) -> Failure:
    details = "; ".join(str(e.get("message", e)) for e in (exc.extra or []) if isinstance(e, dict))
    message = exc.detail if not details else f"{exc.detail}: {details}"
    code = "invalid_json" if "malformed" in message.lower() or "decode" in message.lower() else "invalid_request"
    return Failure(400, code, message)


def _http(exc: HTTPException) -> Failure:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    if exc.status_code == 400 and _caused_by_bad_json(exc):
        code = "invalid_json"
    return Failure(exc.status_code, code, exc.detail, exc.headers)


def _caused_by_bad_json(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (msgspec.DecodeError, SerializationException)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _redis_down(exc: Exception) -> Failure:
    log.warning("redis_unavailable", error=str(exc))
    return Failure(503, "redis_unavailable", "the job queue (Redis) is unavailable; retry shortly", {"Retry-After": "2"})


def _unexpected(exc: Exception) -> Failure:
    log.exception("unhandled_error", error=repr(exc))
    return Failure(500, "internal_error", "internal error")


def exception_handlers(body: Callable[[Failure], Response[Any]]) -> dict[type[Exception] | int, Any]:
    """Every error mapped to its status and stable code, in the body shape ``body`` gives."""
    def handler(describe: Callable[[Any], Failure]) -> Callable[[Request[Any, Any, Any], Any], Response[Any]]:
        return lambda _, exc: body(describe(exc))

    return {
        RagError: handler(rag_failure),
        ValidationException: handler(_validation),
        HTTPException: handler(_http),
        RedisConnectionError: handler(_redis_down),
        RedisTimeoutError: handler(_redis_down),
        Exception: handler(_unexpected),
    }


EXCEPTION_HANDLERS = exception_handlers(_ours)
#: The OpenAI-compatible routes' errors: OpenAI's shape, our codes (its SDKs retry 429 and 503 as they do OpenAI's).
OPENAI_EXCEPTION_HANDLERS = exception_handlers(_openai)
