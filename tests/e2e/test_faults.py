"""Fault injection on real processes and a real Redis: nothing lost, nothing answered twice."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.e2e.conftest import start_service, start_worker
from tests.pdfs import FACTS, write_pdf
from tests.servers import free_port, valkey_binary, wait_for_port

FAST_RECOVERY = {"worker_claim_idle_ms": "1000", "worker_max_generations": "64", "ingest_chunk_words": "40",
                 "ingest_overlap_words": "5"}
QUESTIONS = ["Zephyr turbine tides?", "kelp photosynthesis?", "Helios compiler?", "Seville marmalade?"]


async def ask_until_done(client: httpx.AsyncClient, question: str, *, deadline_s: float = 90) -> list[Any]:
    """Ask, and on a dropped connection resume with Last-Event-ID, until a terminal event."""
    events: list[Any] = []
    job_id = (await client.post("/v1/queries", json={"question": question})).json()["id"]
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        headers = {"Last-Event-ID": events[-1].id} if events else {}
        try:
            async with aconnect_sse(client, "GET", f"/v1/queries/{job_id}/events", headers=headers) as source:
                async for event in source.aiter_sse():
                    events.append(event)
                    if event.event in ("done", "error", "cancelled"):
                        return events
        except (httpx.TransportError, httpx.HTTPStatusError):
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish; events: {[e.event for e in events]}")


def check_answer(events: list[Any]) -> None:
    """The final answer is exactly the tokens received after the last restart."""
    assert events[-1].event == "done", [e.event for e in events]
    last_restart = max((i for i, e in enumerate(events) if e.event == "restart"), default=-1)
    tokens = "".join(e.json()["text"] for e in events[last_restart + 1:] if e.event == "token")
    assert tokens == events[-1].json()["answer"], [f"{e.id} {e.event} {e.data[:40]}" for e in events]
    assert len({e.id for e in events}) == len(events), "an event was delivered twice"


async def run_clients(url: str, n: int, on_streaming: Any = None) -> list[list[Any]]:
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(60, read=90),
                                 limits=httpx.Limits(max_connections=n + 10)) as client:
        tasks = [asyncio.create_task(ask_until_done(client, QUESTIONS[i % len(QUESTIONS)])) for i in range(n)]
        if on_streaming is not None:
            await on_streaming()
        return await asyncio.gather(*tasks)


def test_sigkill_worker_mid_answer(service_factory, slow_llm_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    llm, base_url = slow_llm_app
    llm.state.repeat = 6
    service = service_factory(llm_backend="openai", llm_base_url=base_url, **FAST_RECOVERY)
    assert service.ingest(write_pdf(tmp_path / "f.pdf", FACTS)).returncode == 0
    replacement: list[Any] = []

    async def kill_mid_answer() -> None:
        while llm.state.get("streams_started", 0) < 50:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # every answer is streaming now
        service.worker.stop(signal.SIGKILL)
        replacement.append(await asyncio.to_thread(start_worker, service.env, tmp_path / "worker-b.log"))

    try:
        results = asyncio.run(run_clients(service.api_url, 50, kill_mid_answer))
    finally:
        for worker in replacement:
            worker.stop()
    for events in results:
        check_answer(events)
    restarted = sum(1 for events in results if any(e.event == "restart" for e in events))
    assert restarted > 0, "no job was taken over: the kill came too late to test anything"
    # No job answered to completion twice: one `done` per job.
    assert all(Counter(e.event for e in events)["done"] == 1 for events in results)


@pytest.fixture
def aof_valkey(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A Valkey with AOF on a fixed port, which the test stops and starts again."""
    import subprocess

    port = free_port()
    data = tmp_path / "valkey"
    data.mkdir()
    args = [valkey_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--appendonly", "yes",
            "--appendfsync", "always", "--save", ""]
    procs = []

    def start() -> None:
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for_port(port, proc=procs[-1])

    def stop() -> None:
        procs[-1].send_signal(signal.SIGTERM)
        procs[-1].wait(10)

    start()
    yield f"redis://127.0.0.1:{port}/0", start, stop
    if procs[-1].poll() is None:
        stop()


def test_redis_restart_mid_run(aof_valkey, slow_llm_app, tmp_path: Path, prefix: str) -> None:  # type: ignore[no-untyped-def]
    url, start_redis, stop_redis = aof_valkey
    llm, base_url = slow_llm_app
    llm.state.repeat = 4
    service = start_service(tmp_path, url, prefix, llm_backend="openai", llm_base_url=base_url, **FAST_RECOVERY)
    try:
        assert service.ingest(write_pdf(tmp_path / "f.pdf", FACTS)).returncode == 0

        async def outage() -> None:
            while llm.state.get("streams_started", 0) < 5:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            await asyncio.to_thread(stop_redis)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(start_redis)

        results = asyncio.run(run_clients(service.api_url, 10, outage))
        for events in results:
            check_answer(events)
        with httpx.Client(base_url=service.api_url) as client:
            assert client.get("/readyz").status_code == 200
    finally:
        service.api.stop()
        service.worker.stop()
