"""Errors shared across processes; each has a stable code clients can match on."""

from __future__ import annotations


class RagError(Exception):
    """Base: ``code`` is stable and goes into error events and HTTP bodies."""

    code = "internal_error"
    #: Permanent errors are never retried (dead-lettered at once); transient ones are.
    permanent = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class BadRequest(RagError):
    code = "bad_request"
    permanent = True


class Unavailable(RagError):
    """A backend (Redis, LLM, vector store) is down or timed out: retry later."""

    code = "unavailable"


class StoreLocked(RagError):
    code = "store_locked"
    permanent = True
