"""The embedder's priority lock: queries before ingest pieces, and reservations that hold ingest back."""

from __future__ import annotations

import asyncio

from workers.embedder import BACKGROUND, URGENT, PriorityLock


async def _take(lock: PriorityLock, priority: int, name: str, order: list[str], hold: asyncio.Event) -> None:
    async with lock.hold(priority):
        order.append(name)
        await hold.wait()


async def test_urgent_waiters_go_before_background_ones_that_came_first() -> None:
    lock, order, go = PriorityLock(), [], asyncio.Event()
    first = asyncio.create_task(_take(lock, BACKGROUND, "running", order, go))
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(_take(lock, BACKGROUND, "ingest", order, go)),
             asyncio.create_task(_take(lock, URGENT, "query", order, go))]
    await asyncio.sleep(0)
    go.set()
    await asyncio.gather(first, *tasks)
    assert order == ["running", "query", "ingest"]


async def test_a_reservation_holds_queued_background_work_until_released() -> None:
    lock, order, go = PriorityLock(), [], asyncio.Event()
    go.set()
    query = asyncio.Event()
    running = asyncio.create_task(_take(lock, URGENT, "query embed", order, query))
    await asyncio.sleep(0)
    ingest = asyncio.create_task(_take(lock, BACKGROUND, "ingest", order, go))  # queued behind the query
    await asyncio.sleep(0)
    reservation = lock.reserve()  # the query's answer is on its way to its first token
    query.set()
    await running
    await asyncio.sleep(0.01)
    assert order == ["query embed"], "an ingest piece started while a query was reserved"
    # Urgent work still gets through while reserved.
    await _take(lock, URGENT, "second query", order, go)
    reservation.release()
    reservation.release()  # idempotent
    await asyncio.wait_for(ingest, 1)
    assert order == ["query embed", "second query", "ingest"]


async def test_new_background_work_waits_for_every_reservation() -> None:
    lock, order, go = PriorityLock(), [], asyncio.Event()
    go.set()
    a, b = lock.reserve(), lock.reserve()
    ingest = asyncio.create_task(_take(lock, BACKGROUND, "ingest", order, go))
    a.release()
    await asyncio.sleep(0.01)
    assert order == []
    b.release()
    await asyncio.wait_for(ingest, 1)
    assert order == ["ingest"]


async def test_a_cancelled_waiter_passes_the_lock_on() -> None:
    lock, order, go = PriorityLock(), [], asyncio.Event()
    first = asyncio.create_task(_take(lock, URGENT, "first", order, go))
    await asyncio.sleep(0)
    doomed = asyncio.create_task(_take(lock, URGENT, "doomed", order, go))
    last = asyncio.create_task(_take(lock, BACKGROUND, "last", order, go))
    await asyncio.sleep(0)
    doomed.cancel()
    go.set()
    await asyncio.wait_for(asyncio.gather(first, last), 1)
    assert order == ["first", "last"]
