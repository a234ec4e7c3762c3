"""Ingest memory: a 2,400-page PDF through ``python -m ingest`` and ``python -m workers``, next to a 24-page one.

Issue 3's bound: the ingest process stays under 300 MB RSS, the workers' memory stays flat,
and Redis holds only a bounded window of un-embedded chunks. Both PDFs go through the same
commands users run (the real ONNX embedder and qdrant-edge in the worker), one after the
other against one worker; then both are uploaded to the API (``POST /v1/documents``, which
parses in the API process). Measured every 50 ms: the ingest process's peak RSS (the kernel's
high-water mark, VmHWM), the worker's and the API's RSS, and the ingest batches in Redis that
no worker has acknowledged yet (the consumer group's pending entries plus its lag), against the
window the producer keeps (RAG_INGEST_WINDOW_CHUNKS).

The pages are sparse (WORDS_PER_PAGE words, a page of slides or a report with figures), so
that embedding every chunk of 2,400 pages on the CPU takes a minute, not five; the window
is set below the document's chunk count so that it fills and must hold.

A real PDF goes through ``python -m ingest`` too: R's reference manual (fullrefman.pdf, 2,415 dense
pages, many fonts, an outline of 1,426 entries and links on every page), from the pinned Debian
package that ``bench.manuals`` fetches once into its cache. Its 7,000-odd chunks are embedded by a second
worker with ``bench.fakes``' instant embedder: the ingest process's peak was measured the same with the
real one (244 and 140 MiB with it, 245 and 140 MiB with the fake, before and after the fix of 2026-12-03),
and embedding them on the CPU would add minutes. Without the PDF (no apt-get, no network) the row says
"not run" and why; with --quick it is not run either.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgspec
import redis.asyncio as aredis

from bench.corpus import write_pdfs
from bench.harness import (
    BenchmarkError,
    Context,
    Row,
    rss_kib,
    service_env,
    settings_of,
    start_api,
    start_fake_openai,
    start_worker,
)
from core.keys import Keys
from core.protocol import TERMINAL
from tests.servers import ROOT

WORDS_PER_PAGE = 60
WINDOW_CHUNKS = 256
#: The issue's bound on the ingest process.
LIMIT_MIB = 300
#: The real PDF: bench.manuals' collection and file (a dense 2,415-page reference manual with many fonts).
MANUAL = ("r-manuals", "fullrefman.pdf")


class IngestRun(msgspec.Struct, kw_only=True):
    pages: int
    chunks: int
    seconds: float
    peak_kib: int  # the ingest process's peak RSS (VmHWM, sampled every 50 ms)
    worker_before_kib: int
    worker_max_kib: int
    worker_after_kib: int
    #: The worker's RSS at each quarter of the run's time.
    worker_quarters_kib: list[int]
    #: Most ingest batches in Redis not yet acknowledged by a worker, at any sample.
    max_unacked_batches: int


async def _unacked(redis: aredis.Redis, stream: str) -> int:
    """Entries of the ingest stream not yet acknowledged: delivered and pending, plus not yet delivered (lag)."""
    total = 0
    for group in await redis.xinfo_groups(stream):
        lag = group.get("lag")
        total += int(group.get("pending") or 0) + int(lag or 0)
    return total


async def ingest(env: dict[str, str], path: Path, worker_pid: int, log: Path) -> IngestRun:
    """``python -m ingest --json PATH`` to the end, sampling the worker and Redis meanwhile."""
    settings = settings_of(env)
    stream = Keys(settings.redis.prefix).ingest
    redis = aredis.Redis.from_url(settings.redis.url)
    before = rss_kib(worker_pid)
    samples: list[tuple[float, int]] = []
    unacked = 0
    peak = 0
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ingest", "--json", str(path),
                                                    env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        t0 = time.perf_counter()
        try:
            while proc.returncode is None:
                try:
                    # VmHWM: the peak of the program itself. (wait4's ru_maxrss is no good here: it
                    # counts the parent's memory, which a child shares between fork and exec.)
                    peak = max(peak, rss_kib(proc.pid, "VmHWM"))
                except ProcessLookupError:  # it has just exited
                    break
                samples.append((time.perf_counter() - t0, rss_kib(worker_pid)))
                unacked = max(unacked, await _unacked(redis, stream))
                await asyncio.sleep(0.05)
            code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await redis.aclose()
        seconds = time.perf_counter() - t0
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    files = [line for line in lines if line.get("event") == "file"]
    if code != 0 or not files or files[0].get("status") != "sent":
        raise BenchmarkError(f"python -m ingest {path.name} failed (exit {code}):\n{log.read_text()[-2000:]}")
    if not peak or not samples:
        raise BenchmarkError(f"python -m ingest {path.name} exited before its memory was sampled")
    after = rss_kib(worker_pid)
    quarters = [next((rss for t, rss in samples if t >= seconds * q / 4), after) for q in (1, 2, 3)] + [after]
    return IngestRun(pages=files[0]["pages"], chunks=files[0]["chunks"], seconds=seconds, peak_kib=peak,
                     worker_before_kib=before, worker_max_kib=max([before, after] + [rss for _, rss in samples]),
                     worker_after_kib=after, worker_quarters_kib=quarters, max_unacked_batches=unacked)


class UploadRun(msgspec.Struct, kw_only=True):
    seconds: float
    api_before_kib: int
    api_max_kib: int  # sampled every 50 ms
    api_after_kib: int


async def upload(base_url: str, path: Path, api_pid: int, collection: str) -> UploadRun:
    """``POST /v1/documents`` (multipart) and the ingest job's SSE events to ``done``, sampling the API's RSS."""
    before = rss_kib(api_pid)
    samples = [before]
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            samples.append(rss_kib(api_pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    t0 = time.perf_counter()
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(600.0)) as client:
            with path.open("rb") as fh:
                reply = await client.post("/v1/documents", files={"file": (path.name, fh, "application/pdf")},
                                          data={"collection": collection})
            reply.raise_for_status()
            last = ""
            async with client.stream("GET", reply.json()["links"]["events"]) as events:
                async for line in events.aiter_lines():
                    if line.startswith("event: "):
                        last = line[len("event: "):]
                        if last in TERMINAL:
                            break
            if last != "done":
                raise BenchmarkError(f"the upload of {path.name} ended with {last!r}")
    finally:
        done.set()
        await sampler
    return UploadRun(seconds=time.perf_counter() - t0, api_before_kib=before, api_max_kib=max(samples),
                     api_after_kib=rss_kib(api_pid))


def _mib(kib: int) -> str:
    return f"{kib / 1024:,.0f} MiB"


def _delta(before_kib: int, after_kib: int) -> str:
    return f"{(after_kib - before_kib) / 1024:+,.0f} MiB"


def manual_pdf() -> tuple[Path | None, str]:
    """The real PDF (MANUAL) from bench.manuals' cache, fetched there first if need be; else (None, why not)."""
    collection, name = MANUAL
    try:
        from bench.manuals import FetchError, fetch
    except ImportError as exc:
        return None, f"bench.manuals cannot be imported ({exc})"
    try:
        paths = fetch(collection)
    except (FetchError, OSError) as exc:
        why = str(exc).splitlines()[0]
        return None, f"{collection} could not be fetched: {why[:160] + '…' if len(why) > 160 else why}"
    path = next((p for p in paths if p.name == name), None)
    return (path, "") if path is not None and path.is_file() else (None, f"{collection} has no {name}")


async def ingest_manual(ctx: Context, work: Path) -> tuple[IngestRun | None, str]:
    """MANUAL through ``python -m ingest``, its chunks taken by a worker with the instant fake embedder."""
    if ctx.quick:
        return None, "--quick (a 2,415-page manual)"
    path, why = await asyncio.to_thread(manual_pdf)
    if path is None:
        return None, why
    fake = start_fake_openai(ctx, work / "fake-embedder.log")
    env = service_env(ctx.redis_url, ctx.prefix("memory-manual"), work / "manual-data",
                      embedder_backend="openai", embedder_base_url=fake)
    worker = start_worker(ctx, env, work / "manual-worker.log")
    try:
        return await ingest(env, path, worker.proc.pid, work / "manual.log"), ""
    finally:
        worker.stop()


async def run(ctx: Context) -> list[Row]:
    pages = 48 if ctx.smoke else 240 if ctx.quick else 2_400
    work = ctx.dir("memory")
    small = write_pdfs(work / "small", docs=1, pages=24, words_per_page=WORDS_PER_PAGE, seed=3)[0]
    big = write_pdfs(work / "big", docs=1, pages=pages, words_per_page=WORDS_PER_PAGE, seed=4)[0]
    env = service_env(ctx.redis_url, ctx.prefix("memory"), work / "data", ingest_window_chunks=str(WINDOW_CHUNKS))
    batch = settings_of(env).ingest.batch_chunks
    worker = start_worker(ctx, env, work / "worker.log")
    base = await ingest(env, small, worker.proc.pid, work / "small.log")
    big_run = await ingest(env, big, worker.proc.pid, work / "big.log")
    manual, manual_why = await ingest_manual(ctx, work)
    # The same PDFs uploaded to the API (into another collection: here they are new documents).
    api, url = start_api(ctx, env, work / "api.log")
    small_up = await upload(url, small, api.proc.pid, "uploads")
    big_up = await upload(url, big, api.proc.pid, "uploads")
    manual_what = (f"{manual.pages:,} pages, {manual.chunks:,} chunks, embedded and indexed in {manual.seconds:.0f} s"
                   if manual else "2,415 pages")
    window_batches = -(-WINDOW_CHUNKS // batch) + 1  # the window, plus the batch that waits for room
    return [
        Row(bench="memory", measure=f"`python -m ingest` peak RSS (VmHWM): a {big_run.pages:,}-page PDF "
            f"({big_run.chunks:,} chunks, {WORDS_PER_PAGE} words a page, embedded and indexed in "
            f"{big_run.seconds:.0f} s) vs a {base.pages}-page one; limit {LIMIT_MIB} MiB",
            ours=_mib(big_run.peak_kib), baseline=_mib(base.peak_kib),
            ratio=f"{(big_run.peak_kib - base.peak_kib) / 1024:+,.0f} MiB"),
        Row(bench="memory", measure=f"`python -m ingest` peak RSS (VmHWM): R's {MANUAL[1]}, a real reference manual "
            f"({manual_what}, many fonts, links on every page) vs the {base.pages}-page PDF; limit {LIMIT_MIB} MiB",
            ours=_mib(manual.peak_kib) if manual else f"not run: {manual_why}", baseline=_mib(base.peak_kib),
            ratio=f"{(manual.peak_kib - base.peak_kib) / 1024:+,.0f} MiB" if manual else ""),
        Row(bench="memory", measure=f"the API process's RSS (every 50 ms) while `POST /v1/documents` takes the "
            f"{big_run.pages:,}-page PDF and parses and sends it ({big_up.seconds:.0f} s to `done`): before, most, "
            f"after; vs the {base.pages}-page upload just before",
            ours=f"{_mib(big_up.api_before_kib)}, {_mib(big_up.api_max_kib)}, {_mib(big_up.api_after_kib)}",
            baseline=f"{_mib(small_up.api_before_kib)}, {_mib(small_up.api_max_kib)}, {_mib(small_up.api_after_kib)}",
            ratio=f"{(big_up.api_max_kib - small_up.api_max_kib) / 1024:+,.0f} MiB most"),
        Row(bench="memory", measure=f"`python -m workers` RSS (every 50 ms) across the {big_run.pages:,}-page ingest: "
            "before -> at each quarter of the run, most; vs the same worker's first ingest just before (its "
            f"{base.pages} pages), before -> after",
            ours=f"{_mib(big_run.worker_before_kib)} -> {', '.join(_mib(k) for k in big_run.worker_quarters_kib)}; "
            f"most {_mib(big_run.worker_max_kib)}",
            baseline=f"{_mib(base.worker_before_kib)} -> {_mib(base.worker_after_kib)}",
            ratio=f"{_delta(big_run.worker_before_kib, big_run.worker_after_kib)} over {big_run.pages:,} pages, "
                  f"{_delta(base.worker_before_kib, base.worker_after_kib)} over the first {base.pages}"),
        Row(bench="memory", measure=f"ingest batches ({batch} chunks each) in Redis not yet acknowledged by a worker, "
            f"most at any 50 ms sample, window RAG_INGEST_WINDOW_CHUNKS={WINDOW_CHUNKS}",
            ours=f"{big_run.max_unacked_batches} batches ({big_run.pages:,} pages)",
            baseline=f"{base.max_unacked_batches} batches ({base.pages} pages)",
            ratio=f"bound {window_batches} batches"),
    ]
