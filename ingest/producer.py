"""Sending PDFs to the workers: parse, chunk, XADD chunk batches, and follow the job's progress.

The CLI and the API's upload endpoint share this code. Only a bounded window of
chunks is ever sent but not yet indexed (backpressure), so Redis never holds a
whole library of un-embedded text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from msgspec import Struct

from core.events import EventWriter
from core.keys import Keys
from core.protocol import ChunkIn, chunk_id, Document, IngestBatch, Progress, decode_event, new_id, new_job, now_ms
from ingest.chunker import chunk_pages
from ingest.errors import IngestError
from ingest.pdf import PdfReader, document_id

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.settings import Settings


class FileResult(Struct, kw_only=True):
    path: str
    status: str  # "sent" | "failed"
    document_id: str | None = None
    pages: int = 0
    chunks: int = 0
    code: str | None = None
    message: str | None = None


class RunState(Struct, kw_only=True):
    """What a run has sent and what the workers have indexed, as the progress events tell."""

    job_id: str
    files_total: int
    files_done: int = 0
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


class Producer:
    def __init__(self, redis: Redis, settings: Settings, *, collection: str | None = None,
                 window_chunks: int = 2_000) -> None:
        self._redis = redis
        self._settings = settings
        self._keys = Keys(settings.redis.prefix)
        self._events = EventWriter(redis, self._keys, settings.limits)
        self._collection = collection
        self._window = window_chunks

    async def run(self, files: list[Path], on_update: Callable[[RunState, FileResult | None], None]) -> list[FileResult]:
        """Send every file, then wait until the workers have indexed every chunk."""
        state = RunState(job_id=new_id(), files_total=len(files))
        await self._events.create_record(
            state.job_id, {"kind": "ingest", "created_ms": now_ms(), "files": len(files)}
        )
        follower = asyncio.create_task(self._follow(state, on_update))
        results: list[FileResult] = []
        try:
            for path in files:
                result = await self._send_file(path, state)
                state.files_done += 1
                results.append(result)
                on_update(state, result)
            await self._events.ingest_sealed(state.job_id, state.chunks_sent)
            state.sealed = True
            await follower
        finally:
            follower.cancel()
        return results

    async def _send_file(self, path: Path, state: RunState) -> FileResult:
        ingest = self._settings.ingest
        try:
            if not path.is_file():
                raise IngestError(f"{path} does not exist or is not a file", code="file_not_found")
            doc_id = await asyncio.to_thread(document_id, path)
            reader = await asyncio.to_thread(PdfReader, path, max_bytes=ingest.max_file_mb * 1024 * 1024)
        except IngestError as exc:
            return FileResult(path=str(path), status="failed", code=exc.code, message=exc.message)
        with reader:
            document = Document(id=doc_id, file=path.name, source=str(path.resolve()), title=reader.title,
                                pages=reader.pages)
            chunks = chunk_pages(reader.page_texts(), size=ingest.chunk_words, overlap=ingest.overlap_words)
            sent = 0
            try:
                while True:
                    # Parsing is CPU work: a batch at a time in a thread keeps the loop free.
                    batch = await asyncio.to_thread(_take, chunks, ingest.batch_chunks)
                    if not batch:
                        break
                    await self._wait_for_window(state)
                    message = IngestBatch(
                        document=document,
                        chunks=[ChunkIn(id=chunk_id(doc_id, c.index), text=c.text, page=c.page,
                                        page_end=c.page_end, index=c.index) for c in batch],
                        collection=self._collection,
                    )
                    await self._events.enqueue(new_job(message, job_id=state.job_id), self._keys.ingest)
                    sent += len(batch)
                    state.chunks_sent += len(batch)
            except IngestError as exc:
                return FileResult(path=str(path), status="failed", document_id=doc_id, chunks=sent,
                                  code=exc.code, message=exc.message)
            state.pages += reader.pages
            return FileResult(path=str(path), status="sent", document_id=doc_id, pages=reader.pages, chunks=sent)

    async def _wait_for_window(self, state: RunState) -> None:
        while state.chunks_sent - state.chunks_indexed >= self._window and not state.finished:
            await asyncio.sleep(0.05)

    async def _follow(self, state: RunState, on_update: Callable[[RunState, FileResult | None], None]) -> None:
        cursor = b"0-0"
        key = self._keys.events(state.job_id)
        while True:
            reply = await self._redis.xread({key: cursor}, count=100, block=1000)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    cursor = entry_id
                    kind = fields[b"type"].decode()
                    event = decode_event(fields[b"data"])
                    if isinstance(event, Progress):
                        state.chunks_indexed = max(state.chunks_indexed, event.chunks_done)
                    elif kind == "done":
                        state.finished = True
                    elif kind == "error":
                        state.error = getattr(event, "message", "error")
                    on_update(state, None)
                    if kind == "done":
                        return


def _take(chunks: Iterator, n: int) -> list:  # type: ignore[type-arg]
    out = []
    for chunk in chunks:
        out.append(chunk)
        if len(out) == n:
            break
    return out
