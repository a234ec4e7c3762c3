"""Documents over HTTP: upload a PDF (an ingest job, its events over SSE like a query's), list, delete.

Uploads are received and sent by :mod:`app.uploads`; listing and deleting go through the
documents service that ``python -m ingest`` uses too (deletes are jobs the workers run).
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED
from msgspec import Struct

from app.errors import NotFound, documented
from app.jobs import links
from app.schemas import ErrorInfo, Links
from app.uploads import Uploads
from core.documents import DocumentRecord
from core.errors import BadRequest
from core.payload import collection_name
from ingest.documents import Documents


class DocumentNotFound(NotFound):
    code = "document_not_found"


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


class DocumentList(Struct, kw_only=True):
    documents: list[DocumentView]


class IngestAccepted(Struct, kw_only=True):
    id: str
    status: str = "queued"
    file: str
    collection: str
    links: Links


class DeleteAccepted(Struct, kw_only=True):
    id: str
    status: str = "queued"
    document_id: str
    collection: str
    links: Links


def view(record: DocumentRecord) -> DocumentView:
    return DocumentView(
        id=record.id, collection=record.collection, file=record.file, title=record.title, source=record.source,
        status=record.status, pages=record.pages, chunks=record.chunks, skipped_pages=record.skipped_pages,
        ocr_pages=record.ocr_pages, created_ms=record.created_ms, updated_ms=record.updated_ms,
        job_id=record.job_id or None,
        error=ErrorInfo(code=record.error_code, message=record.error) if record.status == "failed" else None,
    )


class DocumentController(Controller):
    path = "/v1/documents"
    tags = ("documents",)

    @post("/", status_code=HTTP_202_ACCEPTED, request_max_body_size=None,
          summary="Upload a PDF (multipart, part 'file'; optional 'collection', 'force'): an ingest job",
          responses=documented(413))
    async def upload(self, uploads: NamedDependency[Uploads],
                     request: Request[Any, Any, Any]) -> Response[IngestAccepted]:
        accepted = await uploads.accept(request)
        job_id = accepted.job_id
        return Response(
            IngestAccepted(id=job_id, file=accepted.file, collection=accepted.collection, links=links(job_id)),
            status_code=HTTP_202_ACCEPTED,
            headers={"Location": f"/v1/queries/{job_id}"},
        )

    @get("/", summary="Documents with their pages, chunks and status (indexing, ready, failed, deleting)",
         responses=documented())
    async def list_documents(
        self, documents: NamedDependency[Documents],
        collection: Annotated[str | None, QueryParameter(name="collection", required=False)] = None,
    ) -> DocumentList:
        wanted = collection_name(collection) if collection else None
        return DocumentList(documents=[view(r) for r in await documents.all(wanted)])

    @get("/{document_id:str}", summary="One document (in every collection that holds it)", responses=documented(404))
    async def get_document(
        self, documents: NamedDependency[Documents], document_id: FromPath[str],
        collection: Annotated[str | None, QueryParameter(name="collection", required=False)] = None,
    ) -> DocumentList:
        found = await documents.find(document_id, collection_name(collection) if collection else None)
        if not found:
            raise DocumentNotFound(f"no document with id {document_id!r}")
        return DocumentList(documents=[view(r) for r in found])

    @delete("/{document_id:str}", status_code=HTTP_202_ACCEPTED,
            summary="Delete a document: a job the workers run (they own the store); its events stream over SSE",
            responses=documented(404))
    async def delete_document(
        self, documents: NamedDependency[Documents], document_id: FromPath[str],
        collection: Annotated[str | None, QueryParameter(name="collection", required=False)] = None,
    ) -> Response[DeleteAccepted]:
        found = await documents.find(document_id, collection_name(collection) if collection else None)
        if not found:
            raise DocumentNotFound(f"no document with id {document_id!r}")
        if len(found) > 1:
            raise BadRequest(f"document {document_id} is in several collections "
                             f"({', '.join(r.collection for r in found)}): add ?collection=", code="ambiguous_document")
        record = found[0]
        job_id = await documents.request_delete(document_id, record.collection)
        if job_id is None:
            raise DocumentNotFound(f"no document with id {document_id!r}")
        return Response(
            DeleteAccepted(id=job_id, document_id=document_id, collection=record.collection, links=links(job_id)),
            status_code=HTTP_202_ACCEPTED,
            headers={"Location": f"/v1/queries/{job_id}"},
        )
