"""The benchmarks run, briefly, and every figure they print is there and means something.

A smoke run, not a measurement (figures are measured by ``python -m bench``, never in tests): each
benchmark that needs no bench-only package runs with the shortest windows and inputs
(``Context.smoke``) and fails as ``python -m bench`` does on an empty, zero or NaN figure, or on a
side that failed or finished nothing, so a broken benchmark is caught before its numbers are
quoted. RQ, ARQ and dossier-bench come with the bench extra only: the queue and ingest benchmarks
leave those baselines out here. The llm and backlog benchmarks are left out for time (each starts
SmolLM2); their figures go through the same checks in ``python -m bench``.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest

from bench.cli import measure
from bench.harness import Context

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("name", ["queue", "tokens", "fanout", "batching", "ingest", "memory"])
def test_the_benchmark_prints_every_figure(name: str, valkey_url: str, tmp_path: Path) -> None:
    with ExitStack() as stack:
        rows = measure(name, Context(quick=True, smoke=True, tmp=tmp_path, redis_url=valkey_url, stack=stack))
    # measure() has checked every figure of every row; a benchmark that lost a row would show here.
    assert all(row.bench == name for row in rows)
