"""Sending PDFs to the workers: parse, chunk, XADD chunk batches, and follow the job's progress.

Administering what is indexed (listing, deleting) is :mod:`ingest.documents`.

The CLI and the API's upload endpoint share this code. Only a bounded window of
chunks is ever sent but not yet indexed (backpressure), so Redis never holds a
whole library of un-embedded text; parsing runs a batch at a time in a thread, and
only a few pages and one batch of chunks are in memory at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pymupdf
import structlog
from msgspec import Struct

from core.apikeys import OWNER
from core.documents import DocumentRecord, DocumentRegistry
from core.events import EventWriter
from core.hub import EventHub, own_hub
from core.keys import Keys
from core.loop import cancel
from core.payload import DEFAULT_COLLECTION
from core.protocol import (
    ChunkIn,
    DeleteDocument,
    Document,
    DocumentEvent,
    Done,
    Error,
    IngestBatch,
    Progress,
    chunk_id,
    new_id,
    new_job,
    now_ms,
)
from core.queue import JobQueue
from ingest.chunker import TokenCounter
from ingest.errors import FileNotFound, IngestError, NoText
from ingest.parse import ParseStats, parse
from ingest.pdf import PdfReader, document_id

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.settings import Settings

log = structlog.get_logger("ingest")

T = TypeVar("T")


class FileResult(Struct, kw_only=True):
    path: str
    #: "sent" (indexed by the end of the run), "unchanged" (already indexed), "failed".
    status: str
    document_id: str | None = None
    pages: int = 0
    chunks: int = 0
    skipped_pages: list[int] = []
    ocr_pages: list[int] = []
    #: Pages of tables of contents, indexes and lists of figures, left out of the index.
    nav_pages: list[int] = []
    code: str | None = None
    message: str | None = None


class IngestFile(Struct, frozen=True, kw_only=True):
    """A file to ingest: where to read it, the name it is cited by, the source it replaces by."""

    path: Path
    name: str
    source: str

    @classmethod
    def local(cls, path: Path) -> IngestFile:
        return cls(path=path, name=path.name, source=str(path.resolve()))


class RunState(Struct, kw_only=True):
    """What a run has sent and what the workers have indexed, as the progress events tell."""

    job_id: str
    files_total: int
    files_done: int = 0
    #: Pages of every file of the run (known after a quick look at each), and parsed so far.
    pages_total: int = 0
    pages: int = 0
    chunks_sent: int = 0
    chunks_indexed: int = 0
    sealed: bool = False
    finished: bool = False
    error: str | None = None


def expand(paths: Iterable[Path]) -> Iterator[Path]:
    """Files as given; directories searched for *.pdf (any case), in name order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == ".pdf")
        else:
            yield path


def count_pages(paths: Iterable[Path]) -> int:
    """Pages of the files PyMuPDF can open (for the progress bar's total; bad files count 0)."""
    total = 0
    for path in paths:
        try:
            with pymupdf.open(path, filetype="pdf") as doc:
                total += 0 if doc.needs_pass else doc.page_count
        except Exception:  # noqa: BLE001, S112 - the real read reports the error
            continue
    return total


class Producer:
    def __init__(self, redis: Redis, settings: Settings, *, collection: str | None = None,
                 force: bool = False, window_chunks: int | None = None,
                 counter: TokenCounter | None = None, owner: str | None = None) -> None:
        self._redis = redis
        self._settings = settings
        self._keys = Keys(settings.redis.prefix)
        self._events = EventWriter(redis, self._keys, settings.limits)
        self._queue = JobQueue(redis, self._keys, settings.limits)
        self._registry = DocumentRegistry(redis, self._keys)
        self._collection = collection or DEFAULT_COLLECTION
        self._force = force
        self._window = window_chunks or settings.ingest.window_chunks
        self._counter = counter
        #: The API key the ingest job belongs to (an upload's), if any: only it sees the job (app.auth).
        self._owner = owner

    async def run(self, files: list[Path] | list[IngestFile],
                  on_update: Callable[[RunState, FileResult | None], None], *,
                  job_id: str | None = None, fail_job: bool = False) -> list[FileResult]:
        """Send every file, then wait until the workers have indexed every chunk.

        ``fail_job``: a failed file ends the job with an ``error`` event (one-file uploads).
        """
        items = [f if isinstance(f, IngestFile) else IngestFile.local(f) for f in files]
        state = RunState(job_id=job_id or new_id(), files_total=len(items))
        await self.open_job(state.job_id, len(items))
        if self._counter is None:
            self._counter = await asyncio.to_thread(TokenCounter.minilm)
        state.pages_total = await asyncio.to_thread(count_pages, [i.path for i in items])
        async with own_hub(self._redis) as hub:
            return await self._send_all(items, state, on_update, hub, fail_job=fail_job)

    async def _send_all(self, items: list[IngestFile], state: RunState,
                        on_update: Callable[[RunState, FileResult | None], None], hub: EventHub, *,
                        fail_job: bool) -> list[FileResult]:
        follower = asyncio.create_task(self._follow(state, on_update, hub))
        results: list[FileResult] = []
        try:
            for item in items:
                if await self._redis.exists(self._keys.cancel(state.job_id)):
                    result = FileResult(path=str(item.path), status="failed", code="cancelled",
                                        message="the ingest job was cancelled")
                else:
                    result = await self._send_file(item, state, on_update)
                state.files_done += 1
                results.append(result)
                # "sent": every chunk is on its way (the worker that indexes the last one says "ready").
                await self._events.emit(state.job_id, DocumentEvent(
                    status=result.status, file=item.name, document_id=result.document_id, pages=result.pages,
                    chunks=result.chunks, skipped_pages=result.skipped_pages, code=result.code,
                    message=result.message,
                ), unless_cancelled=False)
                on_update(state, result)
            if await self._redis.exists(self._keys.cancel(state.job_id)):
                await self._events.mark_cancelled(state.job_id)
                state.finished = True
                return results
            if fail_job and results and results[-1].status == "failed":
                failed = results[-1]
                await self._events.emit(state.job_id, Error(code=failed.code or "ingest_failed",
                                                            message=failed.message or "ingest failed"),
                                        unless_cancelled=False)
                state.finished = True
                return results
            await self._events.ingest_sealed(state.job_id, state.chunks_sent)
            state.sealed = True
            await follower
        finally:
            await cancel(follower)
        return results

    async def open_job(self, job_id: str, files: int) -> None:
        """Create the ingest job's record: its id is known (and its events readable) from now on."""
        record: dict[str, str | int] = {"kind": "ingest", "created_ms": now_ms(), "files": files}
        if self._owner is not None:
            record[OWNER] = self._owner
        await self._queue.create_record(job_id, record)

    async def _send_file(self, item: IngestFile, state: RunState,
                         on_update: Callable[[RunState, FileResult | None], None]) -> FileResult:
        ingest = self._settings.ingest
        collection = self._collection
        try:
            if not item.path.is_file():
                raise FileNotFound(f"{item.path} does not exist or is not a file")
            doc_id = await asyncio.to_thread(document_id, item.path)
            reader = await asyncio.to_thread(PdfReader, item.path, max_bytes=ingest.max_file_mb * 1024 * 1024,
                                             name=item.name)
        except IngestError as exc:
            return FileResult(path=str(item.path), status="failed", code=exc.code, message=exc.message)
        with reader:
            existing = await self._registry.get(collection, doc_id)
            if existing is not None and existing.status == "ready" and not self._force:
                return FileResult(path=str(item.path), status="unchanged", document_id=doc_id, pages=existing.pages,
                                  chunks=existing.chunks, message="already indexed, unchanged (--force re-indexes)")
            previous = await self._registry.by_source(collection, item.source)
            # A new version goes to the staging area and replaces the old one when complete;
            # a forced re-index of a ready document overwrites its own points in place.
            staged = existing is None or existing.status != "ready"
            record = DocumentRecord(
                id=doc_id, collection=collection, file=item.name, source=item.source, title=reader.title,
                pages=reader.pages, job_id=state.job_id, staged=staged,
                replaces=previous if previous and previous != doc_id else "",
                created_ms=existing.created_ms if existing else 0,
            )
            await self._registry.start(record)
            await self._events.emit(state.job_id, DocumentEvent(
                status="indexing", file=item.name, document_id=doc_id, pages=reader.pages,
            ), unless_cancelled=False)
            document = Document(id=doc_id, file=item.name, source=item.source, title=reader.title,
                                pages=reader.pages)
            stats = ParseStats()
            pages_before = state.pages
            try:
                sent = await self._send_chunks(reader, document, staged, stats, state, pages_before, on_update)
            except (IngestError, asyncio.CancelledError) as exc:
                # Interrupted (Ctrl-C) or cancelled: the document is not half-indexed for ever.
                error = exc if isinstance(exc, IngestError) else IngestError("interrupted", code="interrupted")
                await self._abandon(collection, doc_id, staged, error)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                state.pages = pages_before + reader.pages
                return FileResult(path=str(item.path), status="failed", document_id=doc_id, pages=reader.pages,
                                  skipped_pages=stats.skipped_pages, code=error.code, message=error.message)
            await self._registry.update(collection, doc_id, skipped_pages=len(stats.skipped_pages),
                                       ocr_pages=len(stats.ocr_pages))
            skipped = (f"{len(stats.skipped_pages)} page(s) without a text layer skipped (install tesseract-ocr to "
                       f"OCR them): {_pages(stats.skipped_pages)}") if stats.skipped_pages else None
            return FileResult(path=str(item.path), status="sent", document_id=doc_id, pages=reader.pages, chunks=sent,
                              skipped_pages=stats.skipped_pages, ocr_pages=stats.ocr_pages,
                              nav_pages=stats.nav_pages, message=skipped)

    async def _abandon(self, collection: str, doc_id: str, staged: bool, error: IngestError) -> None:
        await self._registry.fail(collection, doc_id, error.code, error.message)
        if staged:
            # Whatever was sent of a failed new version is garbage: the workers drop it.
            await self._queue.enqueue(new_job(DeleteDocument(
                document_id=doc_id, collection=collection, forget=False, report=False)), self._keys.ingest)

    async def _send_chunks(self, reader: PdfReader, document: Document, staged: bool, stats: ParseStats,
                           state: RunState, pages_before: int,
                           on_update: Callable[[RunState, FileResult | None], None]) -> int:
        ingest = self._settings.ingest
        chunks = parse(reader, ingest, self._counter, stats)
        scope = f"{self._collection}/{document.id}"
        # One batch of look-ahead: the last batch carries the document's totals.
        batch = await asyncio.to_thread(_take, chunks, ingest.batch_chunks)
        if not batch:
            if stats.skipped_pages:
                raise NoText(f"{document.file} has no text layer on any page ({len(stats.skipped_pages)} scanned "
                             "page(s)) and Tesseract is not installed to OCR them (apt-get install tesseract-ocr)")
            raise NoText(f"{document.file} has no extractable text")
        seq = sent = 0
        while batch:
            # Parsing is CPU work: a batch at a time in a thread keeps the loop free.
            following = await asyncio.to_thread(_take, chunks, ingest.batch_chunks)
            last = not following
            await self._wait_for_window(state)
            if await self._redis.exists(self._keys.cancel(state.job_id)):
                raise IngestError("the ingest job was cancelled", code="cancelled")
            message = IngestBatch(
                document=document,
                chunks=[ChunkIn(id=chunk_id(scope, c.index), text=c.text, page=c.page, page_end=c.page_end,
                                index=c.index, section=c.section, context=c.context, nav=c.nav, part=c.part) for c in batch],
                collection=self._collection,
                seq=seq,
                batches=seq + 1 if last else None,
                chunks_total=sent + len(batch) if last else None,
                staged=staged,
            )
            await self._queue.enqueue(new_job(message, job_id=state.job_id), self._keys.ingest)
            seq += 1
            sent += len(batch)
            state.chunks_sent += len(batch)
            state.pages = pages_before + stats.pages
            on_update(state, None)
            batch = following
        return sent

    async def _wait_for_window(self, state: RunState) -> None:
        while state.chunks_sent - state.chunks_indexed >= self._window and not state.finished:
            await asyncio.sleep(0.05)

    async def _follow(self, state: RunState, on_update: Callable[[RunState, FileResult | None], None],
                      hub: EventHub) -> None:
        """The job's progress, as the workers report it, into ``state``, until the job ends."""
        async with aclosing(hub.follow(self._keys.events(state.job_id))) as entries:
            async for entry in entries:
                event = entry.event()
                if isinstance(event, Progress):
                    state.chunks_indexed = max(state.chunks_indexed, event.chunks_done)
                elif entry.terminal:
                    if not isinstance(event, Done):
                        state.error = getattr(event, "message", entry.kind)
                    state.finished = True
                on_update(state, None)


def _pages(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:10]))
    return shown + (f" and {len(numbers) - 10} more" if len(numbers) > 10 else "")


def _take(items: Iterator[T], n: int) -> list[T]:
    out: list[T] = []
    for item in items:
        out.append(item)
        if len(out) == n:
            break
    return out
