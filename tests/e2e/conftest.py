"""Real processes: python -m workers, the API under uvicorn, python -m ingest, llama_cpp.server."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest

from core.keys import Keys
from tests.conftest import child_env, settings_env
from tests.fake_openai import create_fake_openai
from tests.servers import Proc, ThreadedUvicorn, free_port, wait_for_port


class Service(msgspec.Struct):
    env: dict[str, str]
    api_url: str
    worker: Proc
    api: Proc
    tmp: Path

    @property
    def keys(self) -> Keys:
        return Keys(self.env["RAG_REDIS_PREFIX"])

    def ingest(self, *paths: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ingest", "--json", *map(str, paths)], env=self.env,
                              check=False, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parents[2])


def start_worker(env: dict[str, str], log: Path, *args: str) -> Proc:
    worker = Proc.python(["workers", *args], env, log)
    deadline = time.monotonic() + 60
    while "worker_started" not in worker.output():
        if worker.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{worker.output()}")
        time.sleep(0.05)
    return worker


def start_service(tmp: Path, redis_url: str, prefix: str, **overrides: str) -> Service:
    port = free_port()
    env = child_env(settings_env(redis_url, prefix, tmp / "data", api_port=str(port), **overrides))
    worker = start_worker(env, tmp / "worker.log")
    api = Proc([sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port),
                "--log-level", "warning"], env, tmp / "api.log")
    wait_for_port(port, proc=api.proc)
    return Service(env, f"http://127.0.0.1:{port}", worker, api, tmp)


@contextmanager
def running_service(tmp: Path, redis_url: str, name: str, **overrides: str) -> Iterator[Service]:
    """A service for a whole test module (a prefix of its own), stopped at the end."""
    service = start_service(tmp, redis_url, f"{name}{int(time.time() * 1000) % 10**9}", **overrides)
    try:
        yield service
    finally:
        service.api.stop()
        service.worker.stop()


@pytest.fixture(scope="module")
def module_llm() -> Iterator[Any]:
    """The loopback fake LLM for a test module: its app (to read what it was sent, to slow it down) and its URL."""
    app = create_fake_openai()
    with ThreadedUvicorn(app) as server:
        yield app, f"{server.url}/v1"


@pytest.fixture
def slow_llm_app(llm_app: Any) -> Any:
    """The fake LLM, 30 ms per token: streams long enough to interrupt. (app, base URL)."""
    llm_app[0].state.token_delay = 0.03
    return llm_app


@pytest.fixture
def slow_fake_llm(slow_llm_app: Any) -> str:
    return str(slow_llm_app[1])


@pytest.fixture
def service_factory(tmp_path: Path, redis_url: str, prefix: str) -> Iterator:  # type: ignore[type-arg]
    started: list[Service] = []

    def factory(**overrides: str) -> Service:
        service = start_service(tmp_path, redis_url, prefix, **overrides)
        started.append(service)
        return service

    yield factory
    for service in started:
        service.api.stop()
        service.worker.stop()
