"""Documents over HTTP: upload a PDF (an ingest job, its events over SSE like a query's), list, delete.

Uploads are received and sent by :mod:`app.uploads`; listing and deleting go through the
documents service that ``python -m ingest`` uses too (deletes are jobs the workers run).
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, MediaType, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED
from msgspec import Struct

from app.auth import Principal, principal
from app.errors import DocumentNotFound, documented
from app.jobs import job_links
from app.pages import Pages, page_html
from app.schemas import DocumentView, Links, view
from app.uploads import Uploads
from core.documents import DocumentRecord
from core.errors import BadRequest
from core.payload import collection_name
from ingest.documents import Documents


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


def readable(records: list[DocumentRecord], asking: Principal) -> list[DocumentRecord]:
    return [r for r in records if asking.reads(r.collection)]


def wanted(collection: str | None, asking: Principal) -> str | None:
    """The collection a listing names (checked against the key), or None: every collection the key reads."""
    if not collection:
        return None
    name = collection_name(collection)
    asking.check_read(name)
    return name


class DocumentController(Controller):
    path = "/v1/documents"
    tags = ("documents",)

    @post("/", status_code=HTTP_202_ACCEPTED, request_max_body_size=None,
          summary="Upload a PDF (multipart, part 'file'; optional 'collection', 'force'): an ingest job",
          responses=documented(403, 413))
    async def upload(self, uploads: NamedDependency[Uploads],
                     request: Request[Any, Any, Any]) -> Response[IngestAccepted]:
        asking = principal(request)
        accepted = await uploads.accept(request, asking)
        job_id = accepted.job_id
        return Response(
            IngestAccepted(id=job_id, file=accepted.file, collection=accepted.collection,
                           links=await job_links(uploads.tokens, job_id, asking)),
            status_code=HTTP_202_ACCEPTED,
            headers={"Location": f"/v1/queries/{job_id}"},
        )

    @get("/", summary="Documents with their pages, chunks and status (indexing, ready, failed, deleting)",
         responses=documented(403))
    async def list_documents(
        self, documents: NamedDependency[Documents], request: Request[Any, Any, Any],
        collection: Annotated[str | None, QueryParameter(name="collection", required=False)] = None,
    ) -> DocumentList:
        asking = principal(request)
        records = await documents.all(wanted(collection, asking))
        return DocumentList(documents=[view(r) for r in readable(records, asking)])

    @get("/{document_id:str}", summary="One document (in every collection that holds it)",
         responses=documented(403, 404))
    async def get_document(
        self, documents: NamedDependency[Documents], document_id: FromPath[str], request: Request[Any, Any, Any],
        collection: Annotated[str | None, QueryParameter(name="collection", required=False)] = None,
    ) -> DocumentList:
        asking = principal(request)
        found = readable(await documents.find(document_id, wanted(collection, asking)), asking)
        if not found:
            raise DocumentNotFound(f"no document with id {document_id!r}")
        return DocumentList(documents=[view(r) for r in found])

    @get("/{document_id:str}/pages/{page:int}", responses=documented(403, 404),
         summary="A page's indexed text and its document (where a citation's url leads); HTML for a browser")
    async def page(
        self, pages: NamedDependency[Pages], document_id: FromPath[str], page: FromPath[int],
        request: Request[Any, Any, Any],
        collection: Annotated[str | None, QueryParameter(name="collection", required=False)] = None,
    ) -> Response[Any]:
        found = await pages.page(document_id, page, collection, principal(request))
        if request.accept.best_match([MediaType.JSON, MediaType.HTML]) == MediaType.HTML:
            return Response(page_html(found), media_type=MediaType.HTML)
        return Response(found)

    @delete("/{document_id:str}", status_code=HTTP_202_ACCEPTED,
            summary="Delete a document: a job the workers run (they own the store); its events stream over SSE",
            responses=documented(403, 404))
    async def delete_document(
        self, uploads: NamedDependency[Uploads], document_id: FromPath[str], request: Request[Any, Any, Any],
        collection: Annotated[str | None, QueryParameter(name="collection", required=False)] = None,
    ) -> Response[DeleteAccepted]:
        asking = principal(request)
        documents = uploads.documents
        found = readable(await documents.find(document_id, wanted(collection, asking)), asking)
        if not found:
            raise DocumentNotFound(f"no document with id {document_id!r}")
        if len(found) > 1:
            raise BadRequest(f"document {document_id} is in several collections "
                             f"({', '.join(r.collection for r in found)}): add ?collection=", code="ambiguous_document")
        record = found[0]
        asking.check_write(record.collection)
        job_id = await documents.request_delete(document_id, record.collection, owner=asking.key_id)
        if job_id is None:
            raise DocumentNotFound(f"no document with id {document_id!r}")
        return Response(
            DeleteAccepted(id=job_id, document_id=document_id, collection=record.collection,
                           links=await job_links(uploads.tokens, job_id, asking)),
            status_code=HTTP_202_ACCEPTED,
            headers={"Location": f"/v1/queries/{job_id}"},
        )
