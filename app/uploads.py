"""PDF uploads: streamed to a temporary file as they arrive, then sent by this process in the background.

The upload is never held in memory and is refused with 413 past ``RAG_INGEST_MAX_FILE_MB``;
the API process then runs the same producer as ``python -m ingest`` (parsing in threads), so
the API still never embeds and never opens the vector store: workers index. While it runs, an
upload is marked in Redis with its process (core.holders): a restarted API ends those whose
process is gone with ``upload_interrupted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from litestar import Request
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE
from msgspec import Struct
from multipart import MultipartSegment, ParserError, PushMultipartParser
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.auth import Principal
from core.errors import BadRequest
from core.events import EventWriter
from core.holders import holder_gone, identity
from core.keys import Keys
from core.payload import collection_name
from core.protocol import UPLOAD_INTERRUPTED, Error, new_id
from core.settings import Settings
from ingest.chunker import TokenCounter
from ingest.documents import Documents
from ingest.producer import IngestFile, Producer

if TYPE_CHECKING:
    from app.tokens import LinkTokens

log = structlog.get_logger("app.uploads")

_UNSAFE = re.compile(r"[^A-Za-z0-9._ ()+-]")


@functools.lru_cache(maxsize=1)
def _counter() -> TokenCounter:
    return TokenCounter.minilm()


class Accepted(Struct, frozen=True, kw_only=True):
    """An upload taken on: its ingest job, and what it is called where."""

    job_id: str
    file: str
    collection: str


class Uploads:
    def __init__(self, redis: Redis, settings: Settings, tokens: LinkTokens) -> None:
        self._redis = redis
        self._settings = settings
        #: For the links of the jobs uploads and deletes open (their events tokens).
        self.tokens = tokens
        #: The documents' service, for deletes (jobs too).
        self.documents = Documents(redis, settings)
        self._keys = Keys(settings.redis.prefix)
        #: Uploads being sent: referenced until done (the loop keeps only weak references to tasks).
        self._sending: set[asyncio.Task[None]] = set()

    async def accept(self, request: Request[Any, Any, Any], asking: Principal) -> Accepted:
        """Receive the upload, open its ingest job (the asking key's), and start sending it; form fields
        ``collection``, ``force``. A key that may not write in no collection is refused before the body is read."""
        asking.check_write()
        folder = Path(tempfile.mkdtemp(prefix="rag-upload-"))
        try:
            upload = await receive_upload(request, folder, self._settings.ingest.max_file_mb * 1024 * 1024)
            collection = collection_name(upload.fields.get("collection"))
            asking.check_write(collection)
            force = upload.fields.get("force", "").lower() in {"1", "true", "yes", "on"}
            counter = await asyncio.to_thread(_counter)  # loads the tokenizer once per process
            producer = Producer(self._redis, self._settings, collection=collection, force=force, counter=counter,
                                owner=asking.key_id)
            job_id = new_id()
            await producer.open_job(job_id, 1)
            await self._redis.hset(self._keys.uploads, job_id, _mark(collection, identity()))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        item = IngestFile(path=upload.path, name=upload.name, source=f"upload:{upload.name}")
        task = asyncio.create_task(self._send(producer, item, job_id, folder))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        return Accepted(job_id=job_id, file=upload.name, collection=collection)

    async def _send(self, producer: Producer, item: IngestFile, job_id: str, folder: Path) -> None:
        try:
            await producer.run([item], lambda *_: None, job_id=job_id, fail_job=True)
        except Exception as exc:  # a background task: log, never lose silently
            log.exception("upload_ingest_failed", job_id=job_id, error=repr(exc))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(RedisError, OSError):
                await self._redis.hdel(self._keys.uploads, job_id)

    async def fail_interrupted(self) -> list[str]:
        """Uploads whose API process is gone (killed mid-way): their jobs end with a clear error, their documents
        are marked failed; sent again, the same PDF is indexed under the same id (its chunks' ids too): no
        duplicates."""
        registry = self.documents.registry
        events = EventWriter(self._redis, self._keys, self._settings.limits)
        failed = []
        for raw_job, raw in (await self._redis.hgetall(self._keys.uploads)).items():
            job_id, (collection, holder) = raw_job.decode(), _read_mark(raw)
            if not holder_gone(holder):
                continue
            for record in await registry.documents(collection):
                if record.job_id == job_id and record.status == "indexing":
                    await registry.fail(collection, record.id, UPLOAD_INTERRUPTED, "the API restarted mid-upload")
            await events.emit(job_id, Error(code=UPLOAD_INTERRUPTED, message=(
                "the API process reading this upload stopped before it was indexed: upload the file again "
                "(nothing is duplicated)")), unless_cancelled=False)
            await self._redis.hdel(self._keys.uploads, job_id)
            failed.append(job_id)
        if failed:
            log.warning("uploads_interrupted", jobs=failed)
        return failed


def _mark(collection: str, holder: str) -> str:
    """An upload's entry in ``<p>:uploads``: its collection and the process sending it."""
    return f"{collection}|{holder}"


def _read_mark(raw: bytes) -> tuple[str, str]:
    collection, _, holder = raw.decode().partition("|")
    return collection, holder


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
