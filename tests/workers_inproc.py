"""Running a real Worker inside the test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from core.settings import Settings
from workers.worker import Worker


@asynccontextmanager
async def running_worker(settings: Settings, concurrency: int = 1) -> AsyncIterator[Worker]:
    worker = Worker(settings, concurrency=concurrency)
    task = asyncio.create_task(worker.run(install_signals=False))
    ready = asyncio.create_task(worker.ready.wait())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED, timeout=60)
    if task.done():
        task.result()  # raises the worker's start-up error
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)
