"""``/metrics`` of the API and of a worker process (real processes), read with prometheus_client's own parser
before and after real traffic: every count and histogram moves by what the traffic did, no more."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from tests.e2e.conftest import Service
from tests.integration.test_recovery import orphan
from tests.pdfs import FACTS, write_pdf
from tests.servers import free_port

pytestmark = pytest.mark.e2e

#: (sample name, its labels) -> value.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

ASKED = ["Where does the Zephyr turbine run?", "What does the Helios compiler do?", "Who makes marmalade?"]


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


class Moved:
    """What a sample moved by between two scrapes."""

    def __init__(self, before: Samples, after: Samples) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: object) -> float:
        key = (name, frozenset((k, str(v)) for k, v in labels.items()))
        assert key in self.after, f"{name}{labels} is not exported"
        return self.after[key] - self.before.get(key, 0.0)


def until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout} s")


def held_then_cancelled(service: Service, llm: Any, api_metrics: str) -> Samples:
    """A question the fake LLM holds after its first token: scraped while its SSE stream is open and its job
    pending, then cancelled. Returns that scrape."""
    with httpx.Client(base_url=service.api_url, timeout=30) as client:
        job_id = client.post("/v1/queries", json={"question": "HOLD: where does the Zephyr turbine run?"}).json()["id"]
        with client.stream("GET", f"/v1/queries/{job_id}/events") as stream:
            lines = stream.iter_lines()
            until(lambda: any(line == "event: token" for line in lines), "first token")
            during = scrape(api_metrics)
            assert httpx.delete(f"{service.api_url}/v1/queries/{job_id}", timeout=10).status_code == 202
            assert "event: cancelled" in list(lines)
    return during


def test_counts_and_histograms_move_with_real_traffic(service_factory, llm_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    llm, base_url = llm_app
    llm.state.hold_after, llm.state.gate = 1, threading.Event()
    port = free_port()
    service = service_factory(llm_backend="openai", llm_base_url=base_url, worker_metrics_port=str(port),
                              worker_claim_idle_ms="500", ingest_chunk_words="40", ingest_overlap_words="5",
                              ingest_batch_chunks="4")
    api_metrics, worker_metrics = f"{service.api_url}/metrics", f"http://127.0.0.1:{port}/metrics"
    api_before, worker_before = scrape(api_metrics), scrape(worker_metrics)

    run = service.ingest(write_pdf(tmp_path / "facts.pdf", {p: t * 2 for p, t in FACTS.items()}))
    assert run.returncode == 0, run.stderr
    chunks = next(r["chunks"] for r in map(json.loads, run.stdout.splitlines()) if r["event"] == "file")
    with httpx.Client(base_url=service.api_url, timeout=30) as client:
        for question in ASKED:
            answer = client.post("/v1/ask", json={"question": question})
            assert answer.status_code == 200 and "event: done" in answer.text
        assert client.get("/v1/queries/nope").status_code == 404
        assert client.get("/nowhere").status_code == 404
    try:
        during = held_then_cancelled(service, llm, api_metrics)
    finally:
        llm.state.gate.set()

    async def orphans() -> list[str]:
        """Jobs a consumer read and then died with: one to answer again, one delivered too often already."""
        redis = Redis.from_url(service.env["RAG_REDIS_URL"])
        try:
            return [await orphan(redis, service.keys, "Who makes marmalade?", deliveries=1),
                    await orphan(redis, service.keys, "delivered too often", deliveries=3)]
        finally:
            await redis.aclose()

    retried, given_up = asyncio.run(orphans())
    status = {job_id: until(lambda j=job_id: httpx.get(f"{service.api_url}/v1/queries/{j}").json()["status"]
                            in ("done", "failed") and httpx.get(f"{service.api_url}/v1/queries/{j}").json()["status"],
                            f"the end of {job_id}") for job_id in (retried, given_up)}
    assert status == {retried: "done", given_up: "failed"}

    def settled() -> Moved | None:
        """The worker's scrape once the last jobs' counters are in (each follows its job's terminal event)."""
        moved = Moved(worker_before, scrape(worker_metrics))
        ended = (moved("rag_answers_total"), moved("rag_jobs_failed_total"), moved("rag_jobs_cancelled_total"))
        return moved if ended == (len(ASKED) + 1, 1, 1) else None

    worker = until(settled, "the answers, failure and cancel counted")
    api = Moved(api_before, scrape(api_metrics))

    # The API: responses by route and status, the SSE stream and the pending job while held, the dead letter.
    assert api("rag_http_requests_total", route="/v1/ask", method="POST", status=200) == len(ASKED)
    assert api("rag_http_requests_total", route="/v1/queries/{job_id}", method="GET", status=404) == 1
    assert api("rag_http_requests_total", route="unmatched", method="GET", status=404) == 1
    assert api("rag_http_requests_total", route="/v1/queries/{job_id}/events", method="GET", status=200) == 1
    assert api("rag_http_requests_total", route="/v1/queries/{job_id}", method="DELETE", status=202) == 1
    assert Moved(api_before, during)("rag_sse_streams_open") == 1 and api("rag_sse_streams_open") == 0
    assert Moved(api_before, during)("rag_stream_pending", stream="queries") == 1
    assert api.after[("rag_stream_pending", frozenset({("stream", "queries")}))] == 0
    assert api.after[("rag_stream_lag", frozenset({("stream", "queries")}))] == 0
    assert api("rag_dead_letters") == 1
    assert api("rag_event_loop_lag_seconds_count") > 0

    # The worker. Read by a consumer: the asked and the held questions, and every ingest batch.
    assert worker("rag_queue_wait_seconds_count", stream="queries") == len(ASKED) + 1
    batches = worker("rag_ingest_batches_total")
    assert batches >= 2 and worker("rag_queue_wait_seconds_count", stream="ingest") == batches
    assert worker("rag_ingest_chunks_indexed_total") == chunks
    assert worker("rag_embed_batch_size_sum", kind="ingest") == chunks
    # Sources and a first token: asked, held, and the orphan answered again; the held one never ends.
    assert worker("rag_time_to_sources_seconds_count") == len(ASKED) + 2
    assert worker("rag_search_batch_size_sum") == len(ASKED) + 2
    assert worker("rag_time_to_first_token_seconds_count") == len(ASKED) + 2
    assert worker("rag_time_to_first_token_seconds_bucket", le="+Inf") == len(ASKED) + 2
    assert worker("rag_time_to_first_token_seconds_sum") > 0
    assert worker("rag_generation_seconds_count") == worker("rag_answers_total") == len(ASKED) + 1
    assert worker("rag_embed_batch_size_count", kind="query") >= 1
    assert worker("rag_jobs_cancelled_total") == 1
    assert worker("rag_jobs_claimed_total", stream="queries", how="claim") == 2
    assert worker("rag_jobs_dead_lettered_total", stream="queries", code="max_deliveries") == 1
    assert worker("rag_jobs_failed_total") == 1
    assert worker("rag_event_loop_lag_seconds_count") > 0
