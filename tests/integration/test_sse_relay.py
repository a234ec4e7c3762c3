"""Open SSE streams hold no Redis connection of their own: one API process relays them all through one
blocking XREAD, beside a bounded pool for short commands."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from httpx_sse import aconnect_sse
from redis.asyncio import Redis

from app.main import API_REDIS_CONNECTIONS, create_app
from core.events import EventWriter
from core.keys import Keys
from core.protocol import Done
from tests.conftest import make_settings
from tests.servers import ThreadedUvicorn, redis_like_server, valkey_binary

STREAMS = 40


async def test_forty_open_streams_hold_no_connection_of_their_own(prefix: str, tmp_path: Path) -> None:
    # A Valkey of the test's own: its CLIENT LIST is this API's connections and the test's.
    with redis_like_server(valkey_binary(), tmp_path / "valkey") as url:
        settings = make_settings(url, prefix, tmp_path)
        redis = Redis.from_url(url)
        writer = EventWriter(redis, Keys(prefix), settings.limits)
        with ThreadedUvicorn(create_app(settings)) as server:
            limits = httpx.Limits(max_connections=STREAMS + 5)
            async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
                ids = [(await client.post("/v1/queries", json={"question": f"q{i}"})).json()["id"]
                       for i in range(STREAMS)]
                opened = asyncio.Queue[None]()

                async def read(job_id: str) -> list[str]:
                    async with aconnect_sse(client, "GET", f"/v1/queries/{job_id}/events") as source:
                        opened.put_nowait(None)
                        return [event.event async for event in source.aiter_sse()]

                readers = [asyncio.create_task(read(job_id)) for job_id in ids]
                for _ in ids:
                    await asyncio.wait_for(opened.get(), 30)
                clients = await redis.client_list()
                # Ours is one of them; the API holds its pool's and the hub's one, whatever the streams.
                assert len(clients) - 1 <= API_REDIS_CONNECTIONS + 1, len(clients)
                done = Done(answer="nobody")
                await asyncio.gather(*(writer.emit(job_id, done) for job_id in ids))
                assert await asyncio.wait_for(asyncio.gather(*readers), 30) == [["done"]] * STREAMS
        await redis.aclose()
