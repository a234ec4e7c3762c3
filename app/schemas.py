"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct

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


class Health(Struct, kw_only=True):
    status: str
    checks: dict[str, Any] = {}
