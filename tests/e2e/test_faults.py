"""Fault injection on real processes and a real Redis: nothing lost, nothing answered twice.

Every fault is triggered on an observed state (answers streaming, a claim pass seen in Redis),
never after a fixed sleep; every job's events are counted: one `done` each, and a `restart`
exactly where a job was taken over.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from httpx_sse import aconnect_sse
from redis.asyncio import Redis

from core.keys import GROUP, Keys
from core.protocol import TERMINAL, decode_job
from tests.e2e.conftest import start_service, start_worker
from tests.pdfs import FACTS, write_pdf
from tests.servers import ROOT, free_port, valkey_binary, wait_for_port

CLAIM_IDLE_MS = 1000
FAST_RECOVERY = {"worker_claim_idle_ms": str(CLAIM_IDLE_MS), "worker_max_generations": "64",
                 "ingest_chunk_words": "40", "ingest_overlap_words": "5"}
QUESTIONS = ["Zephyr turbine tides?", "kelp photosynthesis?", "Helios compiler?", "Seville marmalade?"]
#: The fake LLM holds these answers after `hold_after` tokens until its gate opens (tests/fake_openai.py).
HELD = [f"{q} HOLD" for q in QUESTIONS]
#: The AOF policy the run command gives its Valkey: the tests restart what users run.
AOF = re.search(r"--appendonly (\w+) --appendfsync (\w+)", (ROOT / "scripts" / "up").read_text())


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def follow(client: httpx.AsyncClient, job_id: str, events: list[Any], *, deadline_s: float = 90) -> list[Any]:
    """A job's events until a terminal one, resuming with Last-Event-ID whenever the connection drops."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        headers = {"Last-Event-ID": events[-1].id} if events else {}
        try:
            async with aconnect_sse(client, "GET", f"/v1/queries/{job_id}/events", headers=headers) as source:
                async for event in source.aiter_sse():
                    events.append(event)
                    if event.event in TERMINAL:
                        return events
        except (httpx.TransportError, httpx.HTTPStatusError):
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish; events: {[e.event for e in events]}")


async def submit(client: httpx.AsyncClient, question: str) -> str:
    response = await client.post("/v1/queries", json={"question": question})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def written(redis_url: str, keys: Keys, job_ids: list[str]) -> list[Counter[str]]:
    """The kinds of event each job's stream holds, counted. Read once every worker has stopped (gracefully:
    in-flight answers finish first), so that an answer written twice shows as two `done` events: a client
    reading the job stops at the first."""
    with redis.Redis.from_url(redis_url) as r:
        return [Counter(f[b"type"].decode() for _, f in r.xrange(keys.events(job_id))) for job_id in job_ids]


def check_answer(events: list[Any], kinds: Counter[str], *, restarts: int) -> None:
    """One `done` written, after ``restarts`` restart events, and nothing else terminal; the answer the client
    got is exactly the tokens after the last restart."""
    assert (kinds["done"], kinds["restart"], kinds["error"], kinds["cancelled"]) == (1, restarts, 0, 0), kinds
    assert events[-1].event == "done" and Counter(e.event for e in events)["restart"] == restarts
    last_restart = max((i for i, e in enumerate(events) if e.event == "restart"), default=-1)
    tokens = "".join(e.json()["text"] for e in events[last_restart + 1:] if e.event == "token")
    assert tokens == events[-1].json()["answer"], [f"{e.id} {e.event} {e.data[:40]}" for e in events]
    assert len({e.id for e in events}) == len(events), "an event was delivered twice"


def log_events(output: str) -> list[dict[str, Any]]:
    """A process's JSON log lines."""
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def client_for(url: str, n: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(60, read=90),
                             limits=httpx.Limits(max_connections=n + 10))


async def pending_entries(r: Redis, keys: Keys) -> dict[str, dict[str, Any]]:
    """The query jobs pending in the group, by job id: consumer, idle ms, times delivered."""
    ids = {e: decode_job(f[b"job"]).id for e, f in await r.xrange(keys.queries)}
    return {ids[p["message_id"]]: p for p in await r.xpending_range(keys.queries, GROUP, "-", "+", 1000)
            if p["message_id"] in ids}


def test_sigkill_worker_mid_answer(service_factory, slow_llm_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    llm, base_url = slow_llm_app
    llm.state.repeat = 6
    service = service_factory(llm_backend="openai", llm_base_url=base_url, **FAST_RECOVERY)
    assert service.ingest(write_pdf(tmp_path / "f.pdf", FACTS)).returncode == 0
    r = redis.Redis.from_url(service.env["RAG_REDIS_URL"])
    replacement: list[Any] = []
    n = 50

    ids: list[str] = []

    async def scenario() -> tuple[list[list[Any]], int]:
        async with client_for(service.api_url, n) as client:
            ids.extend([await submit(client, QUESTIONS[i % len(QUESTIONS)]) for i in range(n)])
            events: list[list[Any]] = [[] for _ in ids]
            tasks = [asyncio.create_task(follow(client, job_id, e)) for job_id, e in zip(ids, events)]

            async def all_streaming() -> bool:
                return all(any(e.event == "token" for e in got) for got in events)

            await until(all_streaming, "every answer to stream")
            service.worker.stop(signal.SIGKILL)
            seconds, micros = r.time()
            killed_ms = int(seconds) * 1000 + int(micros) // 1000  # the worker is gone: it writes nothing after
            replacement.append(await asyncio.to_thread(start_worker, service.env, tmp_path / "worker-b.log"))
            return await asyncio.gather(*tasks), killed_ms

    try:
        results, killed_ms = asyncio.run(scenario())
    finally:
        for worker in replacement:
            worker.stop()
        r.close()
    for events, kinds in zip(results, written(service.env["RAG_REDIS_URL"], service.keys, ids)):
        # Finished before the kill: never taken over; any other job, taken over exactly once.
        done_ms = int(next(e.id for e in events if e.event == "done").split("-")[0])
        check_answer(events, kinds, restarts=0 if done_ms <= killed_ms else 1)
    assert sum(any(e.event == "restart" for e in events) for events in results) > n // 2


def test_a_live_workers_silent_answer_is_never_taken_over(service_factory, llm_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Answers that go silent (a slow LLM) for three claim timeouts, with a second worker process claiming
    every half second: the heartbeat keeps their jobs from looking idle, so none is taken over."""
    llm, base_url = llm_app
    llm.state.hold_after, llm.state.gate = 2, threading.Event()
    service = service_factory(llm_backend="openai", llm_base_url=base_url, **FAST_RECOVERY)
    assert service.ingest(write_pdf(tmp_path / "f.pdf", FACTS)).returncode == 0
    keys = service.keys
    # A second worker process on the same Redis, with a store of its own (the embedded store is one process's).
    other_env = {**service.env, "RAG_DATA_DIR": str(tmp_path / "data-b")}
    other: list[Any] = []
    idle_seen: list[int] = []

    ids: list[str] = []

    async def scenario() -> list[list[Any]]:
        r = Redis.from_url(service.env["RAG_REDIS_URL"])
        async with client_for(service.api_url, 8) as client:
            ids.extend([await submit(client, q) for q in HELD])
            events: list[list[Any]] = [[] for _ in ids]
            tasks = [asyncio.create_task(follow(client, job_id, e)) for job_id, e in zip(ids, events)]

            async def all_held() -> bool:
                return llm.state.get("streams_started", 0) == len(ids)

            await until(all_held, "the first worker to take every question to the LLM")
            other.append(await asyncio.to_thread(start_worker, other_env, tmp_path / "worker-b.log"))
            silent_until = time.monotonic() + 3 * CLAIM_IDLE_MS / 1000
            while time.monotonic() < silent_until:
                idle_seen.extend(p["time_since_delivered"] for p in (await pending_entries(r, keys)).values())
                await asyncio.sleep(0.05)
            llm.state.gate.set()
            results = await asyncio.gather(*tasks)
        await r.aclose()
        return results

    try:
        results = asyncio.run(scenario())
    finally:
        llm.state.gate.set()
        for worker in [*other, service.worker]:
            worker.stop()
    assert idle_seen and max(idle_seen) < CLAIM_IDLE_MS, f"an answering job looked idle for {max(idle_seen)} ms"
    for events, kinds in zip(results, written(service.env["RAG_REDIS_URL"], keys, ids)):
        check_answer(events, kinds, restarts=0)
    assert "claimed_stale" not in other[0].output()


class Valkey:
    """A Valkey with the run command's AOF on a fixed port, which a test stops (SIGTERM, or kill -9) and starts."""

    def __init__(self, data: Path) -> None:
        assert AOF, "scripts/up no longer runs Valkey with --appendonly ... --appendfsync ..."
        self.port = free_port()
        self.data = data
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [valkey_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data),
             "--appendonly", AOF.group(1), "--appendfsync", AOF.group(2), "--save", "", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.BusyLoadingError:  # replaying the AOF
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)


@pytest.fixture
def aof_valkey(tmp_path: Path) -> Iterator[Valkey]:
    (tmp_path / "valkey").mkdir()
    valkey = Valkey(tmp_path / "valkey")
    valkey.start()
    yield valkey
    valkey.stop()


#: A Valkey that refuses XCLAIM: the heartbeat's touches fail, XAUTOCLAIM (the claim pass) works.
NO_TOUCH = ("--user", "default", "on", "nopass", "~*", "&*", "+@all", "-xclaim")


def test_a_redis_outage_longer_than_the_claim_timeout(aof_valkey: Valkey, llm_app, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                      prefix: str) -> None:
    """Redis stops for three claim timeouts, and comes back from its AOF. Answers that were streaming
    (their writes failed) are taken over: a `restart`, then the whole answer. Answers that waited on the
    LLM through the outage are live, though Redis shows them idle: never claimed, one `done` each.

    Two consumers in one process. Which comes first after the outage, a consumer's claim pass or the
    heartbeat that makes live jobs look busy again, is chance: Valkey comes back refusing XCLAIM (the
    heartbeat's touch) until a claim pass has seen every live job idle, so the claim surely comes first.
    """
    llm, base_url = llm_app
    llm.state.token_delay, llm.state.repeat = 0.03, 4  # about 2 s an answer
    llm.state.hold_after, llm.state.gate = 2, threading.Event()
    keys = Keys(prefix)
    service = start_service(tmp_path, aof_valkey.url, prefix, llm_backend="openai", llm_base_url=base_url,
                            worker_concurrency="2", **FAST_RECOVERY)

    held: list[str] = []
    streaming: list[str] = []

    async def scenario() -> tuple[list[list[Any]], list[list[Any]]]:
        async with client_for(service.api_url, 8) as client:
            held.extend([await submit(client, q) for q in HELD])
            streaming.extend([await submit(client, q) for q in QUESTIONS])
            events: dict[str, list[Any]] = {job_id: [] for job_id in held + streaming}
            tasks = {job_id: asyncio.create_task(follow(client, job_id, e)) for job_id, e in events.items()}

            async def all_started() -> bool:
                return llm.state.get("streams_started", 0) == len(events)

            await until(all_started, "every answer to start")
            await asyncio.to_thread(aof_valkey.stop)
            await asyncio.sleep(3 * CLAIM_IDLE_MS / 1000)  # the outage itself
            await asyncio.to_thread(aof_valkey.start, *NO_TOUCH)
            r = Redis.from_url(aof_valkey.url)

            async def live_jobs_claim_passed() -> bool:
                # XAUTOCLAIM counts a delivery even for a job the claimer then leaves to its consumer.
                pending = await pending_entries(r, keys)
                return all(job_id in pending and pending[job_id]["times_delivered"] >= 2 for job_id in held)

            await until(live_jobs_claim_passed, "a claim pass over the live jobs")
            await r.execute_command("ACL", "SETUSER", "default", "+xclaim")
            await r.aclose()
            llm.state.gate.set()
            await asyncio.gather(*tasks.values())
            return [events[j] for j in held], [events[j] for j in streaming]

    try:
        assert service.ingest(write_pdf(tmp_path / "f.pdf", FACTS)).returncode == 0
        held_events, streaming_events = asyncio.run(scenario())
        with httpx.Client(base_url=service.api_url) as client:
            assert client.get("/readyz").status_code == 200
    finally:
        llm.state.gate.set()
        service.api.stop()
        service.worker.stop()
    for events, kinds in zip(held_events, written(aof_valkey.url, keys, held)):
        check_answer(events, kinds, restarts=0)
    for events, kinds in zip(streaming_events, written(aof_valkey.url, keys, streaming)):
        check_answer(events, kinds, restarts=1)


def test_accepted_jobs_survive_a_kill_9_of_redis(aof_valkey: Valkey, tmp_path: Path, prefix: str) -> None:
    """Valkey writes each command to its AOF before it replies (fsync every second, as scripts/up runs it):
    a job the API accepted is in the file, and a kill -9 of Valkey alone loses none."""
    service = start_service(tmp_path, aof_valkey.url, prefix, **FAST_RECOVERY)
    worker: list[Any] = []
    try:
        assert service.ingest(write_pdf(tmp_path / "f.pdf", FACTS)).returncode == 0
        assert service.worker.stop() == 0  # nobody answers: the jobs wait in Redis
        with httpx.Client(base_url=service.api_url, timeout=30) as client:
            ids = [client.post("/v1/queries", json={"question": q}) for q in QUESTIONS]
            assert [r.status_code for r in ids] == [202] * len(QUESTIONS)
            # While a slow disk syncs, Valkey may hold writes back (up to 2 s): those a kill -9 would lose.
            info = redis.Redis.from_url(aof_valkey.url)
            while info.info("persistence").get("aof_buffer_length"):
                time.sleep(0.01)
            info.close()
            aof_valkey.stop(signal.SIGKILL)
            aof_valkey.start()
            for response in ids:
                status = client.get(f"/v1/queries/{response.json()['id']}")
                assert status.status_code == 200 and status.json()["status"] == "queued", status.text
            worker.append(start_worker(service.env, tmp_path / "worker-b.log"))

            async def answers() -> list[list[Any]]:
                async with client_for(service.api_url, len(ids)) as ac:
                    return await asyncio.gather(*(follow(ac, r.json()["id"], []) for r in ids))

            results = asyncio.run(answers())
    finally:
        for w in worker:
            w.stop()
        service.api.stop()
        service.worker.stop()
    for events, kinds in zip(results, written(aof_valkey.url, service.keys, [r.json()["id"] for r in ids])):
        check_answer(events, kinds, restarts=0)


def test_sigterm_finishes_answers_within_the_grace_and_leaves_the_rest_pending(  # type: ignore[no-untyped-def]
        service_factory, llm_app, tmp_path: Path) -> None:
    """SIGTERM with two answers in flight: the one that ends within the grace period (2 s) is finished;
    the one still waiting on the LLM when the grace expires is left pending, never acknowledged or
    marked, and the next worker answers it whole."""
    llm, base_url = llm_app
    llm.state.token_delay, llm.state.repeat = 0.03, 3  # about 1.4 s an answer
    llm.state.hold_after, llm.state.gate = 2, threading.Event()
    service = service_factory(llm_backend="openai", llm_base_url=base_url, worker_shutdown_grace_s="2",
                              **FAST_RECOVERY)
    assert service.ingest(write_pdf(tmp_path / "f.pdf", FACTS)).returncode == 0
    keys = service.keys
    successor: list[Any] = []
    ids: list[str] = []

    async def scenario() -> tuple[list[Any], list[Any], dict[str, dict[str, Any]]]:
        r = Redis.from_url(service.env["RAG_REDIS_URL"])
        async with client_for(service.api_url, 4) as client:
            short, held = await submit(client, QUESTIONS[0]), await submit(client, HELD[1])
            ids.extend([short, held])
            events: dict[str, list[Any]] = {short: [], held: []}
            tasks = {job_id: asyncio.create_task(follow(client, job_id, e)) for job_id, e in events.items()}

            async def both_streaming() -> bool:
                return all(any(e.event == "token" for e in got) for got in events.values())

            await until(both_streaming, "both answers to stream")
            await asyncio.to_thread(service.worker.stop, signal.SIGTERM)
            pending = await pending_entries(r, keys)
            llm.state.gate.set()
            successor.append(await asyncio.to_thread(start_worker, service.env, tmp_path / "worker-b.log"))
            await asyncio.gather(*tasks.values())
        await r.aclose()
        return events[short], events[held], {"short": pending.get(short, {}), "held": pending.get(held, {})}

    try:
        short, held, pending = asyncio.run(scenario())
    finally:
        llm.state.gate.set()
        for worker in successor:
            worker.stop()
    assert service.worker.proc.returncode == 0
    logged = log_events(service.worker.output())
    assert [e["inflight"] for e in logged if e["event"] == "draining"] == [2]  # both were in flight
    assert [e["jobs"] for e in logged if e["event"] == "left_pending"] == [1]
    assert pending["short"] == {}, "the finished job is still pending"
    assert pending["held"].get("times_delivered") == 1, "the job left unfinished was acknowledged"
    short_kinds, held_kinds = written(service.env["RAG_REDIS_URL"], keys, ids)
    check_answer(short, short_kinds, restarts=0)  # finished within the grace, not answered again
    # Nothing was written for the held job when the grace expired: its next event is the successor's restart.
    restart = next(i for i, e in enumerate(held) if e.event == "restart")
    assert {e.event for e in held[:restart]} == {"sources", "token"}
    check_answer(held, held_kinds, restarts=1)
