"""The API's /metrics against real Redis servers: the job streams' backlog as Redis tells it, and a scrape that
still answers, at once, when Redis is gone or frozen (counting the Redis error); a worker whose metrics port is
taken stops at start and names the setting."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from app.main import create_app
from app.metrics import BACKLOG_TIMEOUT_S
from core.keys import GROUP, Keys
from tests.conftest import make_settings
from tests.servers import ThreadedUvicorn, redis_like_server, valkey_binary
from workers.worker import Worker

#: Far below the Redis client's timeouts (5 s to connect, 60 s a read): a scrape this fast waited on none.
AT_ONCE_S = 3.0


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    started = time.monotonic()
    response = await client.get("/metrics")
    took = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert took < BACKLOG_TIMEOUT_S + AT_ONCE_S, f"a scrape took {took:.1f} s"
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def backlog(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], stream: str) -> tuple[float, float] | None:
    labels = frozenset({("stream", stream)})
    if ("rag_stream_lag", labels) not in samples:
        return None
    return samples[("rag_stream_lag", labels)], samples[("rag_stream_pending", labels)]


def redis_errors(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], kind: str) -> float:
    return samples.get(("rag_redis_errors_total", frozenset({("kind", kind)})), 0.0)


@contextlib.asynccontextmanager
async def api(url: str, prefix: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    with ThreadedUvicorn(create_app(make_settings(url, prefix, tmp_path))) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            yield client


async def test_backlog_is_what_waits_and_what_is_pending(any_redis_url: str, prefix: str, tmp_path: Path) -> None:
    keys = Keys(prefix)
    r = Redis.from_url(any_redis_url)
    async with api(any_redis_url, prefix, tmp_path) as client:
        for question in ("one", "two", "three"):
            assert (await client.post("/v1/queries", json={"question": question})).status_code == 202
        # No worker has started: no group yet, and every message waits.
        samples = await scrape(client)
        assert backlog(samples, "queries") == (3, 0) and backlog(samples, "ingest") == (0, 0)
        assert samples[("rag_dead_letters", frozenset())] == 0
        # A consumer of the workers' group reads one (and holds it): two wait, one is pending.
        await r.xgroup_create(keys.queries, GROUP, id="0")
        await r.xreadgroup(GROUP, "c", {keys.queries: ">"}, count=1)
        assert backlog(await scrape(client), "queries") == (2, 1)
        # Acknowledged and deleted, as workers do: only the two that wait are left.
        [(_, [(entry_id, _)])] = await r.xreadgroup(GROUP, "c", {keys.queries: "0"}, count=1)
        await r.xack(keys.queries, GROUP, entry_id)
        await r.xdel(keys.queries, entry_id)
        assert backlog(await scrape(client), "queries") == (2, 0)
    await r.aclose()


async def test_a_scrape_answers_when_redis_is_gone_and_counts_the_errors(prefix: str, tmp_path: Path) -> None:
    with redis_like_server(valkey_binary(), tmp_path / "valkey") as url:
        async with api(url, prefix, tmp_path) as client:
            up = await scrape(client)
            assert backlog(up, "queries") == (0, 0) and redis_errors(up, "connection") == 0
            with contextlib.suppress(redis.ConnectionError):
                redis.Redis.from_url(url).shutdown(nosave=True)
            down = await scrape(client)
            assert backlog(down, "queries") is None and ("rag_dead_letters", frozenset()) not in down
            assert redis_errors(down, "connection") > 0
            again = await scrape(client)
            assert redis_errors(again, "connection") > redis_errors(down, "connection")


async def test_a_scrape_of_a_frozen_redis_is_bounded(prefix: str, tmp_path: Path) -> None:
    """A Redis that takes connections but answers nothing: the scrape waits BACKLOG_TIMEOUT_S for the backlog,
    then answers without it and counts a timeout."""
    with redis_like_server(valkey_binary(), tmp_path / "valkey") as url:
        async with api(url, prefix, tmp_path) as client:
            assert backlog(await scrape(client), "queries") == (0, 0)
            with redis.Redis.from_url(url) as r:
                r.client_pause(120_000, all=True)  # every command waits; the server is stopped after
            frozen = await scrape(client)
            assert backlog(frozen, "queries") is None and redis_errors(frozen, "timeout") == 1


async def test_a_worker_whose_metrics_port_is_taken_stops_at_start(redis_url: str, prefix: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = Worker(make_settings(redis_url, prefix, tmp_path, worker_metrics_port=str(port)))
        with pytest.raises(OSError, match=f"127.0.0.1:{port}.*RAG_WORKER_METRICS_PORT"):
            await worker.run(install_signals=False)
