"""The benchmark harness counts honestly and refuses empty figures: a side that measured nothing stops its
benchmark with a message instead of printing 0."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import time
from pathlib import Path

import pytest

from bench.harness import BenchmarkError, DidNotFinish, Row, check_rows, closed_loop, pct, ratio, rss_kib
from bench.llm import Timing, summary
from bench.tokens import Stream


async def test_every_call_that_finishes_in_the_window_counts_whenever_it_started() -> None:
    # 0.3 s a call, a 0.75 s window opening once each caller has finished one (at 0.3 s): each caller's
    # second and third calls end inside it (0.6, 0.9), its fourth after it (1.2). Counting only calls that
    # start and end inside the window would miss the second, begun just before it opened.
    async def one() -> None:
        await asyncio.sleep(0.3)

    load = await closed_loop(one, what="sleeper", inflight=4, warmup_s=0.0, measure_s=0.75)
    assert load.done == 8
    assert load.seconds == pytest.approx(0.75)
    assert all(0.29 < x < 0.45 for x in load.latencies)


async def test_the_window_lasts_twice_the_slowest_warm_up_call() -> None:
    async def one() -> None:
        await asyncio.sleep(0.4)

    load = await closed_loop(one, what="sleeper", inflight=2, warmup_s=0.0, measure_s=0.1)
    assert 0.8 <= load.seconds < 0.95


async def test_a_side_that_finishes_nothing_in_the_window_did_not_finish() -> None:
    calls = 0

    async def one() -> None:  # fast to warm up, then stuck for longer than the window
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01 if calls <= 2 else 1.0)

    with pytest.raises(DidNotFinish, match="slow side: none of the"):
        await closed_loop(one, what="slow side", inflight=2, warmup_s=0.0, measure_s=0.3)


async def test_a_callers_error_stops_the_run_naming_the_side() -> None:
    calls = 0

    async def one() -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise ConnectionError("the queue went away")
        await asyncio.sleep(0.01)

    with pytest.raises(BenchmarkError, match="baseline X failed: ConnectionError: the queue went away"):
        await closed_loop(one, what="baseline X", inflight=2, warmup_s=0.0, measure_s=1.0)


@pytest.mark.parametrize("row", [
    Row(bench="q", measure="m", ours="0 jobs/s, p50 0.0 ms, p99 0.0 ms", baseline="97 jobs/s", ratio="1.00×"),
    Row(bench="q", measure="m", ours="12 jobs/s, p50 3.1 ms", baseline="0 tokens/s", ratio="2.00×"),
    Row(bench="q", measure="m", ours="12 jobs/s", baseline="9 jobs/s", ratio=" tokens/s"),
    Row(bench="q", measure="m", ours="nan pages/s", baseline="9 pages/s", ratio="1.00×"),
    Row(bench="q", measure="m", ours="", baseline="9 pages/s"),
    Row(bench="q", measure="m", ours="worker 0 µs + Valkey 80 µs = 80 µs", baseline="worker 600 µs", ratio="7.50×"),
])
def test_a_row_with_an_empty_zero_or_nan_figure_is_refused(row: Row) -> None:
    with pytest.raises(BenchmarkError):
        check_rows("q", [row])


def test_rows_with_true_figures_pass_and_no_rows_is_refused() -> None:
    check_rows("q", [
        Row(bench="q", measure="m", ours="2,253 jobs/s, p50 28.1 ms", baseline="802 jobs/s", ratio="2.81× jobs/s"),
        Row(bench="m", measure="m", ours="91 MiB", baseline="90 MiB", ratio="+0 MiB"),
        Row(bench="l", measure="m", ours="0 of 4 /v1/ask answers", baseline="3 of 4 direct streams"),
    ])
    with pytest.raises(BenchmarkError, match="no rows"):
        check_rows("q", [])


def test_no_ratio_of_a_zero_or_a_non_number_and_no_percentile_of_nothing() -> None:
    assert ratio(3.0, 2.0) == "1.50×"
    assert ratio(2.0, 3.0, lower_is_better=True) == "1.50×"
    assert ratio(1.6, 386.0) == "0.0041×"
    for ours, baseline in [(0.0, 1.0), (1.0, 0.0), (math.nan, 1.0), (1.0, math.inf)]:
        with pytest.raises(BenchmarkError):
            ratio(ours, baseline)
    with pytest.raises(BenchmarkError):
        pct([], 50)


def test_the_rss_of_a_process_that_exited_is_an_error_not_zero() -> None:
    assert rss_kib(os.getpid()) > 0
    zombie = subprocess.Popen(["true"])
    try:
        # Exited, not yet waited for: a zombie keeps its status file, without memory lines.
        while Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            time.sleep(0.01)
        with pytest.raises(ProcessLookupError):
            rss_kib(zombie.pid, "VmHWM")
    finally:
        zombie.wait()
    with pytest.raises(ProcessLookupError):
        rss_kib(zombie.pid)


def test_a_stream_that_brought_no_token_is_not_timed() -> None:
    empty = Timing(sent=1.0)
    with pytest.raises(BenchmarkError, match="1 of 2 direct streams brought no token"):
        summary([_timed(1.0, 1.2, 1.5, 10), empty], "direct streams")
    _, rate, _ = summary([_timed(1.0, 1.2, 1.7, 10)], "direct streams")
    assert rate == pytest.approx(20.0)
    short = Stream()
    short.tokens_in(" t1 t2")
    with pytest.raises(BenchmarkError, match="brought 2 of the 3 tokens sent"):
        short.complete("the relayed stream", 3)


def _timed(sent: float, first: float, last: float, tokens: int) -> Timing:
    t = Timing(sent)
    t.first, t.last, t.tokens = first, last, tokens
    return t
