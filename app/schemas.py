"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct

from core.documents import DocumentRecord
from core.protocol import Source, Timings, Usage


class QueryRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    question: str
    top_k: int | None = None
    collection: str | None = None


class Links(Struct, kw_only=True):
    self: str
    events: str


class Accepted(Struct, kw_only=True):
    id: str
    status: Literal["queued"] = "queued"
    links: Links


class Cancelling(Struct, kw_only=True):
    id: str
    status: Literal["cancelled", "cancelling"]
    links: Links


JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]


class ErrorInfo(Struct, kw_only=True):
    code: str
    message: str


class JobView(Struct, kw_only=True, omit_defaults=True):
    id: str
    kind: str
    status: JobStatus
    created_ms: int
    question: str | None = None
    answer: str | None = None
    citations: list[Source] | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    chunks: int | None = None
    error: ErrorInfo | None = None
    links: Links | None = None


class ErrorBody(Struct):
    error: ErrorInfo


class OpenAIErrorInfo(Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str


class OpenAIErrorBody(Struct):
    """The OpenAI-compatible routes' errors: OpenAI's shape, this service's codes."""

    error: OpenAIErrorInfo


class Health(Struct, kw_only=True):
    status: str
    checks: dict[str, Any] = {}


class DocumentView(Struct, kw_only=True, omit_defaults=True):
    id: str
    collection: str
    file: str
    title: str
    source: str
    status: str
    pages: int
    chunks: int
    skipped_pages: int = 0
    ocr_pages: int = 0
    created_ms: int
    updated_ms: int
    job_id: str | None = None
    error: ErrorInfo | None = None


def view(record: DocumentRecord) -> DocumentView:
    return DocumentView(
        id=record.id, collection=record.collection, file=record.file, title=record.title, source=record.source,
        status=record.status, pages=record.pages, chunks=record.chunks, skipped_pages=record.skipped_pages,
        ocr_pages=record.ocr_pages, created_ms=record.created_ms, updated_ms=record.updated_ms,
        job_id=record.job_id or None,
        error=ErrorInfo(code=record.error_code, message=record.error) if record.status == "failed" else None,
    )
