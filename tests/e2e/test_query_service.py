"""End to end on real processes: ingest a generated PDF, ask over HTTP, read SSE like a client."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from httpx_sse import connect_sse

from tests.pdfs import FACTS, write_pdf
from tests.servers import Proc

LONG_FACTS = {page: text * 2 for page, text in FACTS.items()}
CHUNKING = {"ingest_chunk_words": "40", "ingest_overlap_words": "5"}


def read_events(client: httpx.Client, method: str, url: str, **kwargs) -> list:  # type: ignore[no-untyped-def]
    with connect_sse(client, method, url, **kwargs) as source:
        assert source.response.status_code == 200, source.response.read()
        return list(source.iter_sse())


def test_ingest_ask_and_resume(service_factory, fake_llm: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    service = service_factory(llm_backend="openai", llm_base_url=fake_llm, **CHUNKING)
    pdf = write_pdf(tmp_path / "ocean.pdf", LONG_FACTS)
    not_pdf = tmp_path / "notes.pdf"
    not_pdf.write_text("just text, renamed")
    run = service.ingest(pdf, not_pdf)
    assert run.returncode == 1, run.stderr  # one file failed: non-zero, the other is indexed
    files = [json.loads(line) for line in run.stdout.splitlines() if '"event":"file"' in line]
    assert {(f["path"].rsplit("/", 1)[-1], f["status"], f["code"]) for f in files} == {
        ("ocean.pdf", "sent", None), ("notes.pdf", "failed", "not_a_pdf")}
    with httpx.Client(base_url=service.api_url, timeout=60) as client:
        events = read_events(client, "POST", "/v1/ask", json={"question": "Where does the Zephyr turbine run?"})
        kinds = [e.event for e in events]
        assert kinds[0] == "sources" and kinds[-1] == "done" and "token" in kinds
        top = events[0].json()["sources"][0]
        assert top["file"] == "ocean.pdf" and top["page"] == 1
        tokens = "".join(e.json()["text"] for e in events if e.event == "token")
        done = events[-1].json()
        assert tokens == done["answer"] and "Zephyr" in tokens
        # Resume the same job after its second event: exactly the remaining events.
        job_id = client.post("/v1/queries", json={"question": "Who makes marmalade?"}).json()["id"]
        full = read_events(client, "GET", f"/v1/queries/{job_id}/events")
        rest = read_events(client, "GET", f"/v1/queries/{job_id}/events", headers={"Last-Event-ID": full[1].id})
        assert [(e.id, e.data) for e in rest] == [(e.id, e.data) for e in full[2:]]
        assert client.get(f"/v1/queries/{job_id}").json()["status"] == "done"


def test_reconnect_mid_stream_loses_nothing(service_factory, slow_fake_llm: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    service = service_factory(llm_backend="openai", llm_base_url=slow_fake_llm, **CHUNKING)
    assert service.ingest(write_pdf(tmp_path / "f.pdf", LONG_FACTS)).returncode == 0
    with httpx.Client(base_url=service.api_url, timeout=60) as client:
        job_id = client.post("/v1/queries", json={"question": "What does the Helios compiler do?"}).json()["id"]
        seen = []
        with connect_sse(client, "GET", f"/v1/queries/{job_id}/events") as source:
            for event in source.iter_sse():
                seen.append(event)
                if len(seen) == 3:
                    break  # the client drops mid-answer
        assert seen[-1].event == "token"
        rest = read_events(client, "GET", f"/v1/queries/{job_id}/events", headers={"Last-Event-ID": seen[-1].id})
        whole = seen + rest
        assert whole[-1].event == "done"
        assert len({e.id for e in whole}) == len(whole)
        tokens = "".join(e.json()["text"] for e in whole if e.event == "token")
        assert tokens == whole[-1].json()["answer"]


def test_second_worker_on_embedded_store_refuses_to_start(service_factory) -> None:  # type: ignore[no-untyped-def]
    service = service_factory()
    proc = Proc.python(["workers"], service.env, service.tmp / "second.log")
    assert proc.proc.wait(60) == 3
    output = proc.output()
    assert "already open in another worker process" in output and "RAG_QDRANT_URL" in output
