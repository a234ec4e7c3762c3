"""Retrieval through the worker on real (generated) PDFs: the right page comes first, by each arm and fused;
tables of contents do not outrank the content; a collection still indexing says so."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from core.documents import DocumentRecord, DocumentRegistry
from core.keys import Keys
from core.protocol import Query, Retrieval, Sources, decode_event, new_job
from core.queue import JobQueue
from core.redis import connect
from ingest.producer import Producer
from tests import ingest_pdfs as make
from tests.conftest import make_settings
from tests.workers_inproc import running_worker


@pytest.fixture
def settings(redis_url: str, prefix: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    return make_settings(redis_url, prefix, tmp_path / "data", llm_backend="extractive", ingest_ocr="false")


async def sources(settings, question: str, *, collection: str = "manual",  # type: ignore[no-untyped-def]
                  retrieval: Retrieval | None = None) -> Sources:
    redis = connect(settings.redis)
    keys = Keys(settings.redis.prefix)
    try:
        job = new_job(Query(question=question, top_k=5, collection=collection, retrieval=retrieval))
        await JobQueue(redis, keys, settings.limits).submit(job, keys.queries, {"question": question})
        for _ in range(400):
            for _, fields in await redis.xrange(keys.events(job.id)):
                if fields[b"type"] == b"sources":
                    event = decode_event(fields[b"data"])
                    assert isinstance(event, Sources)
                    return event
            await asyncio.sleep(0.025)
    finally:
        await redis.aclose()
    raise AssertionError(f"no sources for {question!r}")


async def ingest(settings, *paths: Path, collection: str = "manual") -> None:  # type: ignore[no-untyped-def]
    redis = connect(settings.redis)
    try:
        results = await asyncio.wait_for(Producer(redis, settings, collection=collection).run(
            list(paths), lambda *_: None), 120)
    finally:
        await redis.aclose()
    assert {r.status for r in results} == {"sent"}, results


#: (question, the page that answers it) on make.manual's pages (3-7 are its sections).
QUESTIONS = [
    ("How do I schedule pickers?", 5),  # a section heading as a question
    ("What does the manual say about cold store alarms?", 7),
    ("which variable overrides the row count HARVEST_ROWS", 4),  # an exact name
    ("who gets woken up at night when the fridge gets too warm", 7),  # a paraphrase
    ("at what setting does the store hold pears", 6),
]


@pytest.mark.parametrize("retrieval", ["hybrid", "dense", "sparse"])
async def test_the_right_page_comes_first(settings, tmp_path: Path, retrieval: Retrieval) -> None:  # type: ignore[no-untyped-def]
    async with running_worker(settings):
        await ingest(settings, make.manual(tmp_path / "manual.pdf"), make.two_columns(tmp_path / "other.pdf"))
        for question, page in QUESTIONS:
            if retrieval == "sparse" and "fridge" in question:
                continue  # no word in common with its page: only the dense arm can find it
            found = await sources(settings, question, retrieval=retrieval)
            top = found.sources[0]
            assert (top.file, top.page) == ("manual.pdf", page), (retrieval, question, found.sources[:3])
            # Tables of contents and indexes, which name every section, never come first or at all.
            assert all(s.page not in (2, 8) for s in found.sources), (question, [s.page for s in found.sources])
            assert found.indexing == []


async def test_a_section_question_gets_the_chunk_the_section_starts_with(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async with running_worker(settings):
        await ingest(settings, make.manual(tmp_path / "manual.pdf", filler=45))
        found = await sources(settings, "Scheduling pickers")
    top = found.sources[0]
    assert top.snippet.startswith("1.2 Scheduling pickers"), top.snippet[:80]
    assert top.section == "Scheduling pickers"


async def test_a_question_of_stopwords_only_still_gets_sources(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async with running_worker(settings):
        await ingest(settings, make.manual(tmp_path / "manual.pdf"))
        for retrieval in ("hybrid", "sparse"):
            found = await sources(settings, "what is it and how?", retrieval=retrieval)  # type: ignore[arg-type]
            assert len(found.sources) == 5  # by the dense arm: BM25 has no word to search


async def test_a_collection_still_indexing_says_so_in_sources(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    redis = connect(settings.redis)
    registry = DocumentRegistry(redis, Keys(settings.redis.prefix))
    async with running_worker(settings):
        await ingest(settings, make.manual(tmp_path / "manual.pdf"))
        # A second document whose chunks are still on their way (as the producer opens it).
        await registry.start(DocumentRecord(id="d" * 32, collection="manual", file="big.pdf", source="/x/big.pdf"))
        found = await sources(settings, "How do I schedule pickers?")
        assert found.indexing == ["big.pdf"]
        assert found.sources[0].file == "manual.pdf"  # the indexed one answers meanwhile
        other = await sources(settings, "How do I schedule pickers?", collection="elsewhere")
        assert other.indexing == [] and other.sources == []
        await registry.fail("manual", "d" * 32, "pdf_broken", "broken")
        assert (await sources(settings, "How do I schedule pickers?")).indexing == []
    await redis.aclose()
    assert msgspec.json.decode(msgspec.json.encode(found))["indexing"] == ["big.pdf"]
