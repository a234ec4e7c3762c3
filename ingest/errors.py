"""Per-file ingestion errors, each with a stable code; none of them stops a run."""

from __future__ import annotations

from core.errors import RagError


class IngestError(RagError):
    code = "ingest_failed"
    permanent = True


class NotAPdf(IngestError):
    code = "not_a_pdf"


class BrokenPdf(IngestError):
    code = "pdf_broken"


class EncryptedPdf(IngestError):
    code = "pdf_encrypted"


class EmptyPdf(IngestError):
    code = "pdf_empty"


class TooLarge(IngestError):
    code = "file_too_large"


class NoText(IngestError):
    """No page has a text layer (a scan without Tesseract installed) or any text at all."""

    code = "pdf_no_text"


class FileNotFound(IngestError):
    code = "file_not_found"
