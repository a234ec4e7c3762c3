"""A restarted worker takes its name back from a holder that is gone and resumes that name's jobs at once;
a name whose holder lives is never taken, and its jobs are not touched."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from core.holders import _boot_id, holder_gone
from core.holders import start_time as _start_time
from core.keys import GROUP, Keys
from core.protocol import Query, encode_job, new_job
from tests.conftest import make_settings
from tests.workers_inproc import running_worker

HOST = socket.gethostname()


def lease_of(pid: int, start: str | None) -> str:
    return f"oldtoken:{_boot_id()}:{pid}:{start or ''}"


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def dead_pid() -> tuple[int, str | None]:
    """A process that existed on this host and is gone now, with the start time it had."""
    proc = sleeper()
    start = _start_time(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, start


async def pending_under(redis: Redis, keys: Keys, consumer: str, question: str) -> str:
    """A job read by ``consumer`` and never finished (its process was killed)."""
    job = new_job(Query(question=question))
    await redis.hset(keys.record(job.id), mapping={"kind": "query", "created_ms": job.created_ms})
    with contextlib.suppress(ResponseError):
        await redis.xgroup_create(keys.queries, GROUP, id="0", mkstream=True)
    await redis.xadd(keys.queries, {"job": encode_job(job)})
    await redis.xreadgroup(GROUP, consumer, {keys.queries: ">"}, count=1)
    return job.id


async def kinds(redis: Redis, keys: Keys, job_id: str) -> list[bytes]:
    return [f[b"type"] for _, f in await redis.xrange(keys.events(job_id))]


def test_holder_gone_only_when_provable() -> None:
    me = os.getpid()
    assert not holder_gone(lease_of(me, _start_time(me)))  # alive
    assert holder_gone(lease_of(me, "1"))  # the pid is another process now
    pid, start = dead_pid()
    assert holder_gone(lease_of(pid, start))
    assert not holder_gone(f"oldtoken:another-boot:{pid}:{start}")  # another machine, or before a reboot
    assert not holder_gone("0123456789abcdef")  # a lease of the previous format


async def test_a_restarted_worker_resumes_its_names_jobs_at_once(redis_url: str, prefix: str, tmp_path: Path) -> None:
    # The default claim timeout (60 s): any resume within seconds is the lease's doing, not a claim's.
    settings = make_settings(redis_url, prefix, tmp_path / "data")
    keys = Keys(prefix)
    redis = Redis.from_url(redis_url)
    name = f"{HOST}-0"
    pid, start = dead_pid()
    await redis.set(f"{keys.workers}:lease:{name}", lease_of(pid, start), px=15_000)  # a kill -9 ago
    job_id = await pending_under(redis, keys, name, "What does the Zephyr turbine do?")
    started = time.monotonic()
    async with running_worker(settings) as worker:
        assert [loop.consumer.name for loop in worker.loops] == [name]
        for _ in range(200):
            if b"error" in (got := await kinds(redis, keys, job_id)) or b"done" in got:
                break
            await asyncio.sleep(0.05)
    took = time.monotonic() - started
    # Resumed: the restart event, then the whole answer (an empty collection's, here: nothing is indexed).
    assert got == [b"restart", b"sources", b"error"], got
    assert took < 10
    assert await redis.xpending(keys.queries, GROUP) == {"pending": 0, "min": None, "max": None, "consumers": []}
    await redis.aclose()


async def test_a_live_holders_name_and_jobs_are_left_alone(redis_url: str, prefix: str, tmp_path: Path) -> None:
    settings = make_settings(redis_url, prefix, tmp_path / "data")
    keys = Keys(prefix)
    redis = Redis.from_url(redis_url)
    name = f"{HOST}-0"
    alive = sleeper()
    try:
        await redis.set(f"{keys.workers}:lease:{name}", lease_of(alive.pid, _start_time(alive.pid)), px=15_000)
        job_id = await pending_under(redis, keys, name, "What does the Zephyr turbine do?")
        async with running_worker(settings) as worker:
            assert [loop.consumer.name for loop in worker.loops] == [f"{HOST}-1"]
            await asyncio.sleep(2)
        assert await kinds(redis, keys, job_id) == []
        pending = await redis.xpending(keys.queries, GROUP)
        assert pending["pending"] == 1 and [c["name"] for c in pending["consumers"]] == [name.encode()]
    finally:
        alive.kill()
        alive.wait()
        await redis.aclose()
