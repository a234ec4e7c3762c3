"""The consumer group against real Redis 7 and Valkey 9: one job to one consumer, claims, dead letters."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from core.keys import GROUP, Keys
from core.protocol import Query, encode_job, new_job
from workers.consumer import Consumer


async def test_groups_are_created_once(redis: Redis, prefix: str) -> None:
    consumer = Consumer(redis, Keys(prefix), "c1")
    await consumer.ensure_groups()
    await consumer.ensure_groups()  # BUSYGROUP is ignored
    groups = await redis.xinfo_groups(Keys(prefix).queries)
    assert [g["name"] for g in groups] == [GROUP.encode()]


async def test_two_consumers_race_for_one_job(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    a, b = Consumer(redis, keys, "a"), Consumer(redis, keys, "b")
    await a.ensure_groups()
    job = new_job(Query(question="who wins?"))
    reads = [asyncio.create_task(c.read(keys.queries, count=10, block_ms=2000)) for c in (a, b)]
    await asyncio.sleep(0.05)
    await redis.xadd(keys.queries, {"job": encode_job(job)})
    got = await asyncio.gather(*reads)
    winners = [d for deliveries in got for d in deliveries]
    assert len(winners) == 1
    assert winners[0].job is not None and winners[0].job.id == job.id


async def test_ack_deletes_so_length_is_backlog(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    consumer = Consumer(redis, keys, "c")
    await consumer.ensure_groups()
    for i in range(3):
        await redis.xadd(keys.queries, {"job": encode_job(new_job(Query(question=f"q{i}")))})
    deliveries = await consumer.read(keys.queries, count=2)
    assert len(deliveries) == 2
    for d in deliveries:
        await consumer.ack(d)
    assert await redis.xlen(keys.queries) == 1
    pending = await redis.xpending(keys.queries, GROUP)
    assert pending["pending"] == 0


async def test_stale_jobs_are_claimed_with_delivery_count(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    dead, alive = Consumer(redis, keys, "dead"), Consumer(redis, keys, "alive")
    await dead.ensure_groups()
    job = new_job(Query(question="orphan"))
    await redis.xadd(keys.queries, {"job": encode_job(job)})
    assert len(await dead.read(keys.queries, count=1)) == 1
    assert await alive.claim_stale(keys.queries, min_idle_ms=10_000, count=10) == []
    await asyncio.sleep(0.06)
    claimed = await alive.claim_stale(keys.queries, min_idle_ms=50, count=10)
    assert [d.job.id for d in claimed if d.job] == [job.id]
    assert claimed[0].deliveries == 2


async def test_the_claim_cursor_reaches_stale_jobs_behind_many_live_ones(redis: Redis, prefix: str) -> None:
    """XAUTOCLAIM looks at COUNT x 10 pending entries a call. Stale jobs behind more live ones than that are
    reached only because each call goes on from the cursor the last one returned; each is claimed once."""
    keys = Keys(prefix)
    live, ghost, claimer = Consumer(redis, keys, "live"), Consumer(redis, keys, "ghost"), Consumer(redis, keys, "c")
    await live.ensure_groups()
    for i in range(30):
        await redis.xadd(keys.queries, {"job": encode_job(new_job(Query(question=f"live {i}")))})
    assert len(await live.read(keys.queries, count=30)) == 30  # delivered just now: not idle
    stale = [new_job(Query(question=f"orphan {i}")) for i in range(5)]
    for job in stale:
        await redis.xadd(keys.queries, {"job": encode_job(job)})
    orphans = await ghost.read(keys.queries, count=5)
    await redis.xclaim(keys.queries, GROUP, "ghost", 0, [d.entry_id for d in orphans], idle=60_000)
    claimed = []
    for _ in range(8):  # two per page, 20 entries looked at a call
        claimed += await claimer.claim_stale(keys.queries, min_idle_ms=10_000, count=2)
    assert sorted(d.job.id for d in claimed if d.job) == sorted(j.id for j in stale)


async def test_malformed_and_dead_lettered_messages(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    consumer = Consumer(redis, keys, "c")
    await consumer.ensure_groups()
    await redis.xadd(keys.queries, {"job": b"\x00not msgpack"})
    await redis.xadd(keys.queries, {"other": b"x"})
    deliveries = await consumer.read(keys.queries, count=10)
    assert [d.job for d in deliveries] == [None, None]
    assert all(d.malformed for d in deliveries)
    for d in deliveries:
        await consumer.dead_letter(d, "malformed_job", d.malformed or "")
    dead = await redis.xrange(keys.dead)
    assert [fields[b"code"] for _, fields in dead] == [b"malformed_job", b"malformed_job"]
    assert await redis.xlen(keys.queries) == 0


async def test_long_dead_consumers_are_pruned(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    live, ghost = Consumer(redis, keys, "live"), Consumer(redis, keys, "ghost")
    await live.ensure_groups()
    # Redis 7.0 creates a consumer only when it reads a message (Valkey 9 on any read):
    # the ghost reads one and finishes it.
    await redis.xadd(keys.queries, {"job": encode_job(new_job(Query(question="done long ago")))})
    for delivery in await ghost.read(keys.queries, count=1):
        await ghost.ack(delivery)
    busy = new_job(Query(question="still pending"))
    await redis.xadd(keys.queries, {"job": encode_job(busy)})
    await Consumer(redis, keys, "busy-ghost").read(keys.queries, count=1)
    await asyncio.sleep(0.02)
    removed = await live.prune_consumers(idle_ms=10, keep={"live"})
    assert removed == ["ghost"]  # the one holding a pending job stays until it is claimed
    names = {c["name"] for c in await redis.xinfo_consumers(keys.queries, GROUP)}
    assert names == {b"busy-ghost"}


async def test_consumer_names_are_stable_and_unique(redis: Redis, prefix: str) -> None:
    from workers.leases import NameLeases

    keys = Keys(prefix)
    first, second = NameLeases(redis, keys, host="h"), NameLeases(redis, keys, host="h")
    assert await first.claim_names(2) == ["h-0", "h-1"]
    assert await second.claim_names(1) == ["h-2"]  # a second live process never shares a name
    await first.release()
    again = NameLeases(redis, keys, host="h")
    assert await again.claim_names(2) == ["h-0", "h-1"]  # a restart takes its names back
    from core.heartbeats import alive_workers

    assert set(await alive_workers(redis, keys)) == {"h-0", "h-1", "h-2"}


async def test_heartbeat_renews_only_our_own_leases(redis: Redis, prefix: str) -> None:
    from workers.leases import NameLeases

    keys = Keys(prefix)
    registry = NameLeases(redis, keys, host="h")
    (name,) = await registry.claim_names(1)
    lease = keys.lease(name)
    await redis.pexpire(lease, 50)
    await registry.beat()
    assert await redis.pttl(lease) > 1000  # renewed
    await redis.set(lease, "someone else")
    await registry.beat()
    assert await redis.get(lease) == b"someone else" and await redis.pttl(lease) == -1  # not ours: untouched


async def test_a_lease_that_expired_while_redis_was_away_is_taken_back(redis: Redis, prefix: str) -> None:
    """After an outage longer than a lease, the live worker's next beat holds its name again: a worker
    starting on the same host then gets another name, and leaves the live one's jobs alone."""
    from workers.leases import NameLeases

    keys = Keys(prefix)
    leases = NameLeases(redis, keys, host="h")
    (name,) = await leases.claim_names(1)
    lease = keys.lease(name)
    held = await redis.get(lease)
    await redis.delete(lease)  # expired while Redis was away
    await leases.beat()
    assert await redis.get(lease) == held and await redis.pttl(lease) > 1000
    assert await NameLeases(redis, keys, host="h").claim_names(1) == ["h-1"]


async def test_release_with_redis_gone_does_not_raise(redis: Redis, prefix: str) -> None:
    """Ctrl-C under scripts/up stops Valkey with the worker: giving names back is best effort."""
    from redis.asyncio import Redis as AsyncRedis

    from tests.servers import free_port
    from workers.leases import NameLeases

    keys = Keys(prefix)
    registry = NameLeases(redis, keys, host="gone")
    await registry.claim_names(1)
    registry._redis = AsyncRedis(port=free_port(), socket_connect_timeout=1)  # nothing listens there
    try:
        await registry.release()
    finally:
        await registry._redis.aclose()
