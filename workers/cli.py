"""``python -m workers``: run a worker process until SIGTERM/SIGINT (or until idle with --burst)."""

from __future__ import annotations

import argparse
import sys

import structlog

from core.errors import RagError, StoreLocked
from core.logs import configure_logging
from core.loop import run
from core.settings import load_or_exit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=None,
                        help="consumers in this process (default: RAG_WORKER_CONCURRENCY, 1)")
    parser.add_argument("--burst", action="store_true", help="exit once no job is waiting")
    args = parser.parse_args(argv)
    if args.concurrency is not None and args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    settings = load_or_exit()
    # After the settings: a bad one stops the process before the models' libraries load (1.5 s and more), which
    # keeps a misconfigured worker's exit within the run command's 3 s start window (it gives up on it then).
    from workers.worker import Worker

    configure_logging(settings.log_level, settings.log_format)
    try:
        run(Worker(settings, concurrency=args.concurrency, burst=args.burst).run())
    except StoreLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (ConnectionError, OSError, RagError) as exc:
        structlog.get_logger("workers").error("worker_failed", error=str(exc))
        print(f"error: cannot start the worker: {exc}", file=sys.stderr)
        return 1
    return 0
