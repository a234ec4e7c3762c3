"""Documents through a real worker: registry, re-ingest, replace, --force, delete, collections, bad files."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from core.keys import Keys
from core.protocol import Query, new_job
from core.queue import JobQueue
from core.redis import connect
from ingest.documents import Documents
from ingest.producer import FileResult, Producer, RunState
from tests import ingest_pdfs as make
from tests.conftest import make_settings
from tests.pdfs import write_pdf
from tests.workers_inproc import running_worker

V1 = {1: "Marmalade from Seville uses bitter oranges picked in January. " * 6,
      2: "The Zephyr turbine turns tides into power for Orkney. " * 6}
V2 = {1: "Marmalade recipes changed: the new version uses blood oranges from Sicily. " * 6}


@pytest.fixture
def settings(redis_url: str, prefix: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    return make_settings(redis_url, prefix, tmp_path / "data", ingest_chunk_words="40",
                         ingest_overlap_words="5", ingest_ocr="false", ingest_batch_chunks="2")


async def run(settings, files: list[Path], **kwargs: Any) -> tuple[list[FileResult], list[RunState]]:  # type: ignore[no-untyped-def]
    redis = connect(settings.redis)
    states: list[RunState] = []
    try:
        producer = Producer(redis, settings, **kwargs)
        results = await asyncio.wait_for(
            producer.run(files, lambda state, _: states.append(state.__copy__())), 60)
    finally:
        await redis.aclose()
    return results, states


async def search(settings, question: str, collection: str | None = None) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    redis = connect(settings.redis)
    keys = Keys(settings.redis.prefix)
    job = new_job(Query(question=question, top_k=10, collection=collection))
    try:
        await JobQueue(redis, keys, settings.limits).submit(job, keys.queries, {"question": question})
        for _ in range(400):
            entries = await redis.xrange(keys.events(job.id))
            for _, fields in entries:
                if fields[b"type"] == b"sources":
                    return json.loads(fields[b"data"])["sources"]  # type: ignore[no-any-return]
            await asyncio.sleep(0.025)
    finally:
        await redis.aclose()
    raise TimeoutError("no sources")


async def documents(settings, collection: str | None = None):  # type: ignore[no-untyped-def]
    redis = connect(settings.redis)
    try:
        return await Documents(redis, settings).all(collection)
    finally:
        await redis.aclose()


async def test_reingest_replace_force_and_delete(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pdf = write_pdf(tmp_path / "recipes.pdf", V1)
    async with running_worker(settings):
        [first], states = await run(settings, [pdf])
        assert first.status == "sent" and first.chunks > 2
        # Backpressure accounting: the run saw every chunk indexed before it ended.
        assert states[-1].chunks_indexed == states[-1].chunks_sent == first.chunks
        [doc] = await documents(settings)
        assert (doc.id, doc.status, doc.pages, doc.chunks, doc.file) == (first.document_id, "ready", 2, first.chunks,
                                                                           "recipes.pdf")
        assert doc.source == str(pdf.resolve())
        hits = await search(settings, "Seville bitter oranges")
        assert hits and {h["document_id"] for h in hits} == {first.document_id}

        [again], _ = await run(settings, [pdf])
        assert again.status == "unchanged" and again.document_id == first.document_id
        assert "unchanged" in (again.message or "")

        write_pdf(pdf, V2)  # a changed file at the same path replaces the old version
        [second], _ = await run(settings, [pdf])
        assert second.status == "sent" and second.document_id != first.document_id
        [doc] = await documents(settings)
        assert (doc.id, doc.status) == (second.document_id, "ready")
        hits = await search(settings, "marmalade oranges")
        assert {h["document_id"] for h in hits} == {second.document_id}
        assert len(hits) == second.chunks  # no stale chunk of the old version is left

        [forced], _ = await run(settings, [pdf], force=True)
        assert forced.status == "sent" and forced.chunks == second.chunks
        assert [(d.id, d.status) for d in await documents(settings)] == [(second.document_id, "ready")]
        assert len(await search(settings, "marmalade oranges")) == second.chunks

        redis = connect(settings.redis)
        try:
            service = Documents(redis, settings)
            assert await service.resolve(str(pdf)) == second.document_id
            assert await service.delete(second.document_id) == second.chunks
            assert await service.delete(second.document_id) is None
        finally:
            await redis.aclose()
        assert await documents(settings) == []
        assert await search(settings, "marmalade oranges") == []


async def test_collections_isolate_documents(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pdf = write_pdf(tmp_path / "shared.pdf", V1)
    async with running_worker(settings):
        [a], _ = await run(settings, [pdf], collection="a")
        [b], _ = await run(settings, [pdf], collection="b")
        assert a.status == b.status == "sent" and a.document_id == b.document_id
        assert {(d.collection, d.status) for d in await documents(settings)} == {("a", "ready"), ("b", "ready")}
        assert len(await search(settings, "Zephyr turbine", "a")) == a.chunks
        assert await search(settings, "Zephyr turbine") == []  # the default collection is empty
        redis = connect(settings.redis)
        try:
            assert await Documents(redis, settings).delete(a.document_id, "a") == a.chunks
        finally:
            await redis.aclose()
        assert [d.collection for d in await documents(settings)] == ["b"]
        assert len(await search(settings, "Zephyr turbine", "b")) == b.chunks


async def test_bad_files_are_reported_and_the_batch_goes_on(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = [
        make.encrypted(tmp_path / "locked.pdf"),
        make.truncated(tmp_path / "cut.pdf"),
        make.not_a_pdf(tmp_path / "notes.pdf"),
        make.zero_pages(tmp_path / "empty.pdf"),
        tmp_path / "missing.pdf",
        make.scanned(tmp_path / "scan.pdf"),
        write_pdf(tmp_path / "good.pdf", V1),
    ]
    # A scan-only file: its one page has no text layer, and OCR is off.
    only_scan = tmp_path / "onlyscan.pdf"
    import pymupdf

    with pymupdf.open(files[5]) as doc:
        doc.delete_page(0)
        doc.save(only_scan)
    files.insert(6, only_scan)
    async with running_worker(settings):
        results, _ = await run(settings, files)
    by_name = {Path(r.path).name: r for r in results}
    assert {n: r.code for n, r in by_name.items() if r.status == "failed"} == {
        "locked.pdf": "pdf_encrypted", "cut.pdf": "pdf_broken", "notes.pdf": "not_a_pdf",
        "empty.pdf": "pdf_empty", "missing.pdf": "file_not_found", "onlyscan.pdf": "pdf_no_text"}
    assert by_name["scan.pdf"].status == "sent" and by_name["scan.pdf"].skipped_pages == [2]
    assert "tesseract" in (by_name["scan.pdf"].message or "")
    assert by_name["good.pdf"].status == "sent"
    docs = {d.file: d for d in await documents(settings)}
    assert docs["good.pdf"].status == "ready" and docs["scan.pdf"].skipped_pages == 1
    assert docs["onlyscan.pdf"].status == "failed" and docs["onlyscan.pdf"].error_code == "pdf_no_text"


async def test_backpressure_bounds_the_unindexed_window(redis_url: str, prefix: str, tmp_path: Path) -> None:
    settings = make_settings(redis_url, prefix, tmp_path / "data", ingest_chunk_words="40", ingest_overlap_words="5",
                             ingest_batch_chunks="5")
    pdf = make.many_pages(tmp_path / "long.pdf", 10)
    async with running_worker(settings):
        [result], states = await run(settings, [pdf], window_chunks=10)
    assert result.status == "sent" and result.chunks > 30
    # At most the window plus the batch being sent is ever waiting in Redis.
    assert max(s.chunks_sent - s.chunks_indexed for s in states) <= 10 + 5


async def test_cancelling_the_ingest_job_stops_it(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pdf = make.many_pages(tmp_path / "long.pdf", 10)
    redis = connect(settings.redis)
    keys = Keys(settings.redis.prefix)
    events = JobQueue(redis, keys, settings.limits)
    cancelled = False

    def on_update(state: RunState, _: FileResult | None) -> None:
        nonlocal cancelled
        if state.chunks_indexed and not cancelled:
            cancelled = True
            asyncio.get_running_loop().create_task(events.cancel(state.job_id))

    try:
        async with running_worker(settings):
            results = await asyncio.wait_for(
                Producer(redis, settings, window_chunks=2).run([pdf, pdf], on_update, job_id="cancelme"), 60)
            assert [(r.status, r.code) for r in results] == [("failed", "cancelled"), ("failed", "cancelled")]
            last = await redis.xrevrange(keys.events("cancelme"), count=1)
            assert last[0][1][b"type"] == b"cancelled"
            [doc] = await Documents(redis, settings).all()
            assert (doc.status, doc.error_code) == ("failed", "cancelled")
            for _ in range(100):  # the workers drop what was sent of it
                if not await search(settings, "tidal turbine energy"):
                    break
                await asyncio.sleep(0.05)
            assert await search(settings, "tidal turbine energy") == []
    finally:
        await redis.aclose()
