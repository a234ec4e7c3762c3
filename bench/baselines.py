"""The no-op jobs RQ and ARQ run, and the ARQ worker entry point (``python -m bench.baselines arq ...``)."""

from __future__ import annotations

import sys
from typing import Any


def noop() -> int:
    """RQ's job: nothing to do."""
    return 1


async def arq_noop(ctx: dict[str, Any]) -> int:
    """ARQ's job: nothing to do."""
    return 1


def run_arq_worker(url: str, queue: str, poll_delay: float, max_jobs: int) -> None:
    """ARQ's own worker (its defaults: poll_delay 0.5 s, max_jobs 10), on our Valkey and its own queue name."""
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    worker = Worker(functions=[func(arq_noop, name="noop")], redis_settings=RedisSettings.from_dsn(url),
                    queue_name=queue, handle_signals=True, poll_delay=poll_delay, max_jobs=max_jobs)
    worker.run()


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "arq":
        run_arq_worker(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit("usage: python -m bench.baselines arq REDIS_URL QUEUE POLL_DELAY_S MAX_JOBS")
