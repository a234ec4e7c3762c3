"""Documents over HTTP: upload a PDF (an ingest job, its events over SSE like a query's), list, delete.

The upload is streamed to a temporary file as it arrives (never held in memory) and
refused with 413 past ``RAG_INGEST_MAX_FILE_MB``; the API process then runs the same
producer as ``python -m ingest`` in the background (parsing in threads), so the API
still never embeds and never opens the vector store: workers index, and delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import structlog
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import FromPath, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_413_REQUEST_ENTITY_TOO_LARGE
from msgspec import Struct
from multipart import MultipartSegment, ParserError, PushMultipartParser
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.errors import NotFound, documented
from app.jobs import Jobs, links
from app.schemas import ErrorInfo, Links
from core.documents import DocumentRecord
from core.errors import BadRequest
from core.events import EventWriter
from core.holders import holder_gone, identity
from core.keys import Keys
from core.payload import COLLECTION_NAME, COLLECTION_NAME_RULE, DEFAULT_COLLECTION
from core.protocol import UPLOAD_INTERRUPTED, Error, new_id
from core.settings import Settings
from ingest.chunker import TokenCounter
from ingest.documents import Documents
from ingest.producer import IngestFile, Producer

log = structlog.get_logger("app.documents")

_UNSAFE = re.compile(r"[^A-Za-z0-9._ ()+-]")


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


def _jobs(state: State) -> Jobs:
    return state.jobs  # type: ignore[no-any-return]


def _collection(value: str | None) -> str:
    if value is None or value == "":
        return DEFAULT_COLLECTION
    if not COLLECTION_NAME.fullmatch(value):
        raise BadRequest(f"collection: {COLLECTION_NAME_RULE}", code="invalid_collection")
    return value


@functools.lru_cache(maxsize=1)
def _counter() -> TokenCounter:
    return TokenCounter.minilm()


class Upload(Struct, kw_only=True):
    path: Path
    name: str
    fields: dict[str, str]


async def receive_upload(request: Request[Any, Any, Any], folder: Path, max_bytes: int) -> Upload:
    """Stream a multipart body's ``file`` part to ``folder``; other parts are small form fields."""
    content_type, options = request.content_type
    if content_type != "multipart/form-data" or not options.get("boundary"):
        raise BadRequest("send the PDF as multipart/form-data, in a part named 'file'", code="invalid_upload")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes + 64 * 1024:
        raise HTTPException(status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                            detail=f"the upload is over the {max_bytes // (1024 * 1024)} MB limit")
    fields: dict[str, str] = {}
    path: Path | None = None
    name = ""
    segment: MultipartSegment | None = None
    out = None
    text = bytearray()
    size = 0
    try:
        with PushMultipartParser(options["boundary"], max_segment_count=16) as parser:
            async for chunk in request.stream():
                for part in parser.parse(chunk):
                    if isinstance(part, MultipartSegment):
                        segment, text = part, bytearray()
                        if part.name == "file" and part.filename is not None and path is None:
                            name = _UNSAFE.sub("_", Path(part.filename).name)[:200] or "upload.pdf"
                            path = folder / name
                            out = path.open("wb")
                    elif part:
                        if out is not None and segment is not None and segment.name == "file":
                            size += len(part)
                            if size > max_bytes:
                                raise HTTPException(status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                                                    detail=f"the file is over the {max_bytes // (1024 * 1024)} MB "
                                                           "limit (RAG_INGEST_MAX_FILE_MB)")
                            out.write(part)
                        elif len(text) + len(part) <= 1024:
                            text.extend(part)
                    elif segment is not None:
                        if segment.name == "file" and out is not None:
                            out.close()
                            out = None
                        elif segment.name:
                            fields[segment.name] = text.decode(segment.charset or "utf-8", "replace").strip()
                        segment = None
                if parser.closed:
                    break
    except ParserError as exc:
        raise BadRequest(f"malformed multipart body: {exc}", code="invalid_upload") from None
    finally:
        if out is not None:
            out.close()
    if path is None:
        raise BadRequest("no file: send the PDF in a multipart part named 'file'", code="invalid_upload")
    return Upload(path=path, name=name, fields=fields)


class DocumentController(Controller):
    path = "/v1/documents"
    tags = ("documents",)

    @post("/", status_code=HTTP_202_ACCEPTED, request_max_body_size=None,
          summary="Upload a PDF (multipart, part 'file'; optional 'collection', 'force'): an ingest job",
          responses=documented(413))
    async def upload(self, state: State, request: Request[Any, Any, Any]) -> Response[IngestAccepted]:
        jobs = _jobs(state)
        settings = jobs.settings
        folder = Path(tempfile.mkdtemp(prefix="rag-upload-"))
        try:
            upload = await receive_upload(request, folder, settings.ingest.max_file_mb * 1024 * 1024)
            collection = _collection(upload.fields.get("collection"))
            force = upload.fields.get("force", "").lower() in {"1", "true", "yes", "on"}
            counter = await asyncio.to_thread(_counter)  # loads the tokenizer once per process
            producer = Producer(jobs.redis, settings, collection=collection, force=force, counter=counter)
            job_id = new_id()
            await producer.open_job(job_id, 1)
            await jobs.redis.hset(jobs.keys.uploads, job_id, f"{collection}|{identity()}")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        item = IngestFile(path=upload.path, name=upload.name, source=f"upload:{upload.name}")
        task = asyncio.create_task(_ingest(producer, item, job_id, folder, jobs.redis, jobs.keys))
        tasks: set[asyncio.Task[None]] = getattr(state, "ingest_tasks", None) or set()
        state.ingest_tasks = tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return Response(
            IngestAccepted(id=job_id, file=upload.name, collection=collection, links=links(job_id)),
            status_code=HTTP_202_ACCEPTED,
            headers={"Location": f"/v1/queries/{job_id}"},
        )

    @get("/", summary="Documents with their pages, chunks and status (indexing, ready, failed, deleting)",
         responses=documented())
    async def list_documents(
        self, state: State,
        collection: Annotated[str | None, QueryParameter(name="collection", required=False)] = None,
    ) -> DocumentList:
        jobs = _jobs(state)
        wanted = _collection(collection) if collection else None
        return DocumentList(documents=[view(r) for r in await Documents(jobs.redis, jobs.settings).all(wanted)])

    @get("/{document_id:str}", summary="One document (in every collection that holds it)", responses=documented(404))
    async def get_document(
        self, state: State, document_id: FromPath[str],
        collection: Annotated[str | None, QueryParameter(name="collection", required=False)] = None,
    ) -> DocumentList:
        jobs = _jobs(state)
        found = await Documents(jobs.redis, jobs.settings).find(
            document_id, _collection(collection) if collection else None)
        if not found:
            raise DocumentNotFound(f"no document with id {document_id!r}")
        return DocumentList(documents=[view(r) for r in found])

    @delete("/{document_id:str}", status_code=HTTP_202_ACCEPTED,
            summary="Delete a document: a job the workers run (they own the store); its events stream over SSE",
            responses=documented(404))
    async def delete_document(
        self, state: State, document_id: FromPath[str],
        collection: Annotated[str | None, QueryParameter(name="collection", required=False)] = None,
    ) -> Response[DeleteAccepted]:
        jobs = _jobs(state)
        documents = Documents(jobs.redis, jobs.settings)
        found = await documents.find(document_id, _collection(collection) if collection else None)
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


async def _ingest(producer: Producer, item: IngestFile, job_id: str, folder: Path, redis: Redis, keys: Keys) -> None:
    try:
        await producer.run([item], lambda *_: None, job_id=job_id, fail_job=True)
    except Exception as exc:  # a background task: log, never lose silently
        log.exception("upload_ingest_failed", job_id=job_id, error=repr(exc))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(RedisError, OSError):
            await redis.hdel(keys.uploads, job_id)


async def fail_interrupted_uploads(redis: Redis, settings: Settings) -> list[str]:
    """Uploads whose API process is gone (killed mid-way): their jobs end with a clear error, their documents are
    marked failed; sent again, the same PDF is indexed under the same id (its chunks' ids too): no duplicates."""
    keys = Keys(settings.redis.prefix)
    failed = []
    for raw_job, raw in (await redis.hgetall(keys.uploads)).items():
        job_id, (collection, holder) = raw_job.decode(), raw.decode().split("|", 1)
        if not holder_gone(holder):
            continue
        registry = Documents(redis, settings).registry
        for record in await registry.documents(collection):
            if record.job_id == job_id and record.status == "indexing":
                await registry.fail(collection, record.id, UPLOAD_INTERRUPTED, "the API restarted mid-upload")
        await EventWriter(redis, keys, settings.limits).emit(job_id, Error(code=UPLOAD_INTERRUPTED, message=(
            "the API process reading this upload stopped before it was indexed: upload the file again "
            "(nothing is duplicated)")), unless_cancelled=False)
        await redis.hdel(keys.uploads, job_id)
        failed.append(job_id)
    if failed:
        log.warning("uploads_interrupted", jobs=failed)
    return failed

