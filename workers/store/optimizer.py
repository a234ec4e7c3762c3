"""Background optimization of the embedded shard (HNSW graphs, merged segments), in another process.

``EdgeShard.optimize()`` blocks and holds the GIL as long as it runs (185 s for 200,000
chunks on 2 cores): in the worker it would stop every query. So the worker copies the live
shard (updates wait for the copy, queries do not), a child process optimizes the copy on CPU
time nothing else wants (the idle scheduling class), and the worker adopts it, replaying the updates made meanwhile (see
EdgeStore.copy_for_optimizing and EdgeStore.adopt). Each run optimizes what was added since
the last one: the store is optimized in slices, and no query waits for one.

``python -m workers.store.optimizer PATH`` is the child: it optimizes the shard at PATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time

import structlog

from workers.store.edge import EdgeStore

log = structlog.get_logger("workers.store.optimizer")

#: CPU niceness of the child where the idle scheduling class is not available.
NICENESS = 19


class Optimizer:
    def __init__(self, store: EdgeStore, *, threshold: int, poll_s: float = 2.0) -> None:
        self._store = store
        self._threshold = threshold
        self._poll_s = poll_s
        self.runs = 0

    async def run(self) -> None:
        """Optimize whenever ``threshold`` points came in since the last time; until cancelled."""
        backoff = self._poll_s
        while True:
            await asyncio.sleep(backoff)
            if self._store.pending < self._threshold:
                continue
            backoff = self._poll_s if await self.optimize_once() else min(backoff * 4, 600.0)

    async def optimize_once(self) -> bool:
        store = self._store
        pending, store.pending = store.pending, 0
        started = time.monotonic()
        target = await store.copy_for_optimizing()
        copied = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workers.store.optimizer", str(target),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await proc.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            await store.abandon(target)
            store.pending += pending
            raise
        if proc.returncode != 0:
            log.warning("store_optimize_failed", returncode=proc.returncode, error=err.decode()[-500:])
            await store.abandon(target)
            store.pending += pending
            return False
        optimized = time.monotonic()
        replayed = await store.adopt(target)
        self.runs += 1
        log.info("store_optimized", generation=store.generation, points=pending,
                 copy_s=round(copied - started, 2), optimize_s=round(optimized - copied, 1),
                 replayed_updates=replayed, result=json.loads(out or b"{}"))
        return True


def optimize(path: str) -> dict[str, object]:
    import qdrant_edge as qe

    shard = qe.EdgeShard.load(path)
    try:
        changed = shard.optimize()
        shard.flush()
        info = shard.info()
        return {"changed": changed, "segments": info.segments_count, "points": info.points_count,
                "indexed_vectors": info.indexed_vectors_count}
    finally:
        shard.close()


def lower_priority() -> None:
    """Run only on CPU time nothing else wants: the LLM's prefill, embedding and queries come first (at
    nice 10 the child still took a share of the cores from a first token)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(NICENESS)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m workers.store.optimizer SHARD_PATH", file=sys.stderr)
        return 2
    lower_priority()
    print(json.dumps(optimize(argv[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
