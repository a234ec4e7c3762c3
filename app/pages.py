"""A document's page as indexed: what every citation's ``url`` resolves to (``GET /v1/documents/{id}/pages/{n}``).

The document's metadata comes from the registry; the page's text from the workers, which own the
store (a page job on the queries stream: the chunks on that page, overlaps joined once). A
browser (``Accept: text/html``) gets the page as a small HTML document; anything else gets JSON.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING
from urllib.parse import quote

from msgspec import Struct

from app.errors import DocumentNotFound, NotFound
from app.schemas import DocumentView, view
from core.payload import DEFAULT_COLLECTION, collection_name
from core.protocol import PAGE_NOT_FOUND, PageChunk, PageRequest, PageText

if TYPE_CHECKING:
    from app.auth import Principal
    from app.jobs import Jobs
    from ingest.documents import Documents


class PageLinks(Struct, kw_only=True):
    document: str
    previous: str | None = None
    next: str | None = None


class PageView(Struct, kw_only=True):
    document: DocumentView
    page: int
    text: str
    chunks: list[PageChunk]
    links: PageLinks


def page_path(document_id: str, page: int, collection: str, token: str | None = None) -> str:
    """A page's path on this service; with the page token a link was signed with, when there is one."""
    params = ([] if collection == DEFAULT_COLLECTION else [f"collection={quote(collection)}"]) + (
        [f"token={quote(token)}"] if token else [])
    return f"/v1/documents/{quote(document_id)}/pages/{page}" + (f"?{'&'.join(params)}" if params else "")


class Pages:
    def __init__(self, jobs: Jobs, documents: Documents) -> None:
        self._jobs = jobs
        self._documents = documents

    async def page(self, document_id: str, page: int, collection: str | None, asking: Principal) -> PageView:
        name = collection_name(collection)
        asking.check_read(name)
        found = await self._documents.find(document_id, name)
        if not found:
            raise DocumentNotFound(f"no document with id {document_id!r} in collection {name!r}")
        record = found[0]
        if not 1 <= page <= max(record.pages, 1):
            raise NotFound(f"document {document_id} has pages 1 to {record.pages}, not {page}", code=PAGE_NOT_FOUND)
        job_id = await self._jobs.submit(PageRequest(document_id=document_id, page=page, collection=name),
                                         {"document_id": document_id, "page": page}, asking)
        text = next(e for e in await self._jobs.result(job_id) if isinstance(e, PageText))
        return PageView(document=view(record), page=page, text=text.text, chunks=text.chunks, links=PageLinks(
            document=f"/v1/documents/{document_id}" + ("" if name == DEFAULT_COLLECTION else f"?collection={name}"),
            previous=page_path(document_id, page - 1, name, asking.page_token) if page > 1 else None,
            next=page_path(document_id, page + 1, name, asking.page_token) if page < record.pages else None))


def page_html(page: PageView) -> str:
    """The page for a browser that follows a citation's link: the text, and where it comes from."""
    doc = page.document
    title = html.escape(f"{doc.title or doc.file}, page {page.page}")
    nav = " · ".join(f'<a href="{html.escape(href)}">{label}</a>' for label, href in (
        ("previous page", page.links.previous), ("next page", page.links.next)) if href)
    paragraphs = "".join(f"<p>{html.escape(p)}</p>" for p in page.text.split("\n") if p.strip())
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<style>body{font:16px/1.5 system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}'
            'header p{color:#555}</style></head><body>'
            f'<header><h1>{title}</h1><p>{html.escape(doc.file)} · page {page.page} of {doc.pages} · collection '
            f'{html.escape(doc.collection)}</p><nav>{nav}</nav></header><main>{paragraphs}</main></body></html>')
