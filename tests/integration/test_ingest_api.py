"""Documents over HTTP: upload (multipart, size limit) -> ingest job events over SSE, list, delete."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from tests import ingest_pdfs as make
from tests.conftest import make_settings
from tests.pdfs import FACTS, write_pdf
from tests.servers import ThreadedUvicorn
from tests.sse import SSE, parse_sse
from tests.workers_inproc import running_worker


@pytest.fixture
def settings(redis_url: str, prefix: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    return make_settings(redis_url, prefix, tmp_path / "data", ingest_chunk_words="40", ingest_overlap_words="5",
                         ingest_max_file_mb="1", ingest_ocr="false")


@asynccontextmanager
async def service(settings) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    async with running_worker(settings):
        with ThreadedUvicorn(create_app(settings)) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                yield client


async def upload(client: httpx.AsyncClient, path: Path, **fields: str) -> tuple[httpx.Response, list[SSE]]:
    with path.open("rb") as fh:
        response = await client.post("/v1/documents", files={"file": (path.name, fh, "application/pdf")},
                                     data=fields)
    if response.status_code != 202:
        return response, []
    events = parse_sse((await client.get(response.json()["links"]["events"])).text)
    return response, events


async def test_upload_list_and_delete(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pdf = write_pdf(tmp_path / "facts.pdf", {p: t * 2 for p, t in FACTS.items()})
    async with service(settings) as client:
        response, events = await upload(client, pdf)
        body = response.json()
        assert response.status_code == 202 and body["status"] == "queued" and body["file"] == "facts.pdf"
        assert response.headers["location"] == f"/v1/queries/{body['id']}"
        kinds = [e.event for e in events]
        assert kinds[0] == "document" and kinds[-1] == "done" and "progress" in kinds
        statuses = [e.data["status"] for e in events if e.event == "document"]
        assert statuses[0] == "indexing" and sorted(statuses[1:]) == ["ready", "sent"]
        ready = next(e.data for e in events if e.event == "document" and e.data["status"] == "ready")
        assert ready["pages"] == 4 and ready["chunks"] == events[-1].data["chunks"] > 0
        job = (await client.get(f"/v1/queries/{body['id']}")).json()
        assert job["status"] == "done" and job["kind"] == "ingest"

        [doc] = (await client.get("/v1/documents")).json()["documents"]
        assert (doc["file"], doc["status"], doc["pages"], doc["collection"]) == ("facts.pdf", "ready", 4, "default")
        assert doc["source"] == "upload:facts.pdf"
        assert (await client.get(f"/v1/documents/{doc['id']}")).json()["documents"][0]["chunks"] == doc["chunks"]

        answer = parse_sse((await client.post("/v1/ask", json={"question": "Where does the Zephyr turbine run?"})).text)
        assert answer[0].data["sources"][0]["document_id"] == doc["id"]

        _, again = await upload(client, pdf)
        assert [e.data["status"] for e in again if e.event == "document"] == ["unchanged"]
        assert again[-1].event == "done"

        gone = await client.delete(f"/v1/documents/{doc['id']}")
        assert gone.status_code == 202 and gone.json()["document_id"] == doc["id"]
        deleted = parse_sse((await client.get(gone.json()["links"]["events"])).text)
        assert deleted[-1].event == "done" and deleted[-1].data["chunks"] == doc["chunks"]
        assert (await client.get("/v1/documents")).json()["documents"] == []
        missing = await client.delete(f"/v1/documents/{doc['id']}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "document_not_found"


async def test_upload_errors(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    async with service(settings) as client:
        response, events = await upload(client, make.not_a_pdf(tmp_path / "notes.pdf"))
        assert response.status_code == 202
        assert [e.event for e in events] == ["document", "error"]
        assert events[0].data["status"] == "failed"
        assert events[-1].data["code"] == "not_a_pdf"
        assert (await client.get(f"/v1/queries/{response.json()['id']}")).json()["status"] == "failed"

        big = tmp_path / "big.pdf"
        big.write_bytes(b"%PDF-1.7\n" + b"0" * (1024 * 1024 + 10))
        too_big, _ = await upload(client, big)
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "payload_too_large"

        no_file = await client.post("/v1/documents", data={"collection": "x"}, files={"other": ("a.txt", b"x")})
        assert no_file.status_code == 400 and no_file.json()["error"]["code"] == "invalid_upload"
        bad, _ = await upload(client, write_pdf(tmp_path / "ok.pdf"), collection="no spaces!")
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_collection"
        assert (await client.get("/v1/documents")).json()["documents"] == []
        schema = (await client.get("/schema/openapi.json")).json()
        assert {"/v1/documents", "/v1/documents/{document_id}"} <= set(schema["paths"])


async def test_an_upload_left_half_way_by_a_killed_api_fails_clearly_and_is_retried_without_duplicates(  # type: ignore[no-untyped-def]
        settings, tmp_path: Path) -> None:
    import asyncio
    import sys

    from redis.asyncio import Redis

    from core.documents import DocumentRecord, DocumentRegistry
    from core.holders import identity
    from core.keys import Keys
    from core.protocol import UPLOAD_INTERRUPTED
    from ingest.pdf import document_id
    from ingest.producer import Producer

    pdf = write_pdf(tmp_path / "facts.pdf", {p: t * 2 for p, t in FACTS.items()})
    keys = Keys(settings.redis.prefix)
    redis = Redis.from_url(settings.redis.url)
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(30)")
    holder = identity(gone.pid)  # the API process that was reading the upload, killed
    gone.kill()
    await gone.wait()
    live_holder = identity()  # this process: alive
    producer = Producer(redis, settings)
    await producer.open_job("deadjob", 1)
    await producer.open_job("livejob", 1)
    doc = await asyncio.to_thread(document_id, pdf)
    await DocumentRegistry(redis, keys).start(DocumentRecord(id=doc, collection="default", file="facts.pdf",
                                                     source="upload:facts.pdf", job_id="deadjob"))
    await redis.hset(keys.uploads, mapping={"deadjob": f"default|{holder}", "livejob": f"default|{live_holder}"})
    async with service(settings) as client:  # the API (re)starts
        events = parse_sse((await client.get("/v1/queries/deadjob/events")).text)
        assert [e.event for e in events] == ["error"] and events[0].data["code"] == UPLOAD_INTERRUPTED
        assert (await client.get(f"/v1/documents/{doc}")).json()["documents"][0]["status"] == "failed"
        assert await redis.hkeys(keys.uploads) == [b"livejob"]  # a live process's upload is left alone
        # Sent again: indexed, one document, its chunks once.
        _, events = await upload(client, pdf)
        assert events[-1].event == "done"
        docs = (await client.get("/v1/documents")).json()["documents"]
        assert [(d["id"], d["status"]) for d in docs] == [(doc, "ready")]
    await redis.aclose()
