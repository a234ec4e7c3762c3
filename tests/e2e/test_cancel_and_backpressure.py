"""Cancellation (DELETE, a client hanging up) and backpressure, on real processes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

from tests.pdfs import FACTS, write_pdf

CHUNKING = {"ingest_chunk_words": "40", "ingest_overlap_words": "5"}


def wait_status(client: httpx.Client, job_id: str, status: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(f"/v1/queries/{job_id}").json()
        if body["status"] == status or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


def test_delete_stops_generation_mid_stream(service_factory, slow_llm_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    llm, base_url = slow_llm_app
    llm.state.repeat = 20  # a long answer
    service = service_factory(llm_backend="openai", llm_base_url=base_url, **CHUNKING)
    assert service.ingest(write_pdf(tmp_path / "f.pdf", FACTS)).returncode == 0
    with httpx.Client(base_url=service.api_url, timeout=30) as client:
        job_id = client.post("/v1/queries", json={"question": "What does the Helios compiler do?"}).json()["id"]
        events = []
        with connect_sse(client, "GET", f"/v1/queries/{job_id}/events") as source:
            for event in source.iter_sse():
                events.append(event)
                if event.event == "token" and len([e for e in events if e.event == "token"]) == 3:
                    response = client.delete(f"/v1/queries/{job_id}")
                    assert response.status_code == 202 and response.json()["status"] == "cancelling"
        assert events[-1].event == "cancelled"
        assert "done" not in {e.event for e in events}
        assert wait_status(client, job_id, "cancelled")["status"] == "cancelled"
        # Cancelling twice: the job has finished (as cancelled).
        again = client.delete(f"/v1/queries/{job_id}")
        assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"
        unknown = client.delete("/v1/queries/0123456789abcdef0123")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "job_not_found"
    # The LLM stream was closed, not drained.
    deadline = time.monotonic() + 5
    while llm.state.get("streams_aborted", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert llm.state.streams_aborted >= 1


def test_client_hanging_up_on_ask_cancels_the_job(service_factory, slow_llm_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    llm, base_url = slow_llm_app
    llm.state.repeat = 20
    service = service_factory(llm_backend="openai", llm_base_url=base_url, **CHUNKING)
    assert service.ingest(write_pdf(tmp_path / "f.pdf", FACTS)).returncode == 0
    with httpx.Client(base_url=service.api_url, timeout=30) as client:
        with connect_sse(client, "POST", "/v1/ask", json={"question": "Seville oranges?"}) as source:
            job_id = source.response.headers["x-job-id"]
            for event in source.iter_sse():
                if event.event == "token":
                    break  # hang up mid-answer
        status = wait_status(client, job_id, "cancelled")
        assert status["status"] == "cancelled"
        with connect_sse(client, "GET", f"/v1/queries/{job_id}/events") as source:
            events = [e.event for e in source.iter_sse()]
        assert events[0] == "sources" and events[-1] == "cancelled" and "done" not in events


def test_cancel_before_start_and_backpressure(service_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    service = service_factory(limits_max_backlog="3")
    assert service.ingest(write_pdf(tmp_path / "facts.pdf")).returncode == 0  # the questions are answered
    service.worker.stop()  # nobody consumes: jobs wait
    with httpx.Client(base_url=service.api_url, timeout=30) as client:
        ids = [client.post("/v1/queries", json={"question": f"q{i}"}).json()["id"] for i in range(3)]
        for path in ("/v1/queries", "/v1/ask"):
            refused = client.post(path, json={"question": "one too many"})
            assert refused.status_code == 429, path
            assert int(refused.headers["retry-after"]) > 0 and refused.json()["error"]["code"] == "overloaded"
        cancelled = client.delete(f"/v1/queries/{ids[0]}")
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
        with connect_sse(client, "GET", f"/v1/queries/{ids[0]}/events") as source:
            assert [e.event for e in source.iter_sse()] == ["cancelled"]
        # A worker that starts later skips the cancelled job and answers the others.
        from tests.e2e.conftest import start_worker

        worker = start_worker(service.env, tmp_path / "worker2.log")
        try:
            assert wait_status(client, ids[1], "done")["status"] == "done"
            assert wait_status(client, ids[2], "done")["status"] == "done"
            with connect_sse(client, "GET", f"/v1/queries/{ids[0]}/events") as source:
                assert [e.event for e in source.iter_sse()] == ["cancelled"]
        finally:
            worker.stop()
