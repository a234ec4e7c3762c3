"""A worker started on the previous release's embedded store says so in one line, migrates it, and serves it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.settings import EmbedderSettings
from tests.conftest import child_env, make_settings, settings_env
from tests.e2e.conftest import start_worker
from tests.integration.test_hybrid_store import schema1_shard
from tests.integration.test_retrieval import sources
from workers.embedder import OnnxEmbedder


def test_worker_migrates_a_schema1_store_before_taking_jobs(tmp_path: Path, redis_url: str, prefix: str) -> None:
    data = tmp_path / "data"
    schema1_shard(data / "qdrant", OnnxEmbedder(EmbedderSettings()), 300)
    env = child_env(settings_env(redis_url, prefix, data, llm_backend="extractive"))
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        out = worker.output()
        migrating = [line for line in out.splitlines() if "store_migrating" in line]
        assert len(migrating) == 1 and "schema_from" in migrating[0] and "--reindex" in migrating[0]
        assert out.index("store_migrated") < out.index("worker_started")  # before any job is taken
        settings = make_settings(redis_url, prefix, data, llm_backend="extractive")
        found = asyncio.run(sources(settings, "R_LIBS_USER", collection="default", retrieval="sparse"))
        assert found.sources[0].snippet == "Users can have libraries named by the variable R_LIBS_USER."
    finally:
        worker.stop()
    # A second start has nothing to migrate.
    worker = start_worker(env, tmp_path / "worker2.log")
    try:
        assert "store_migrating" not in worker.output()
    finally:
        worker.stop()
