"""Every entry point stops at start on a bad setting, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.servers import ROOT


@pytest.mark.parametrize("module", ["app", "workers", "ingest"])
def test_bad_setting_stops_the_process_with_its_name(module: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env["RAG_WORKER_BATCH_SIZE"] = "lots"
    run = subprocess.run([sys.executable, "-m", module, *(["x.pdf"] if module == "ingest" else [])],
                         env=env, cwd=ROOT, check=False, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "RAG_WORKER_BATCH_SIZE" in run.stderr


@pytest.mark.parametrize("module", ["app", "workers", "ingest"])
def test_settings_that_cannot_work_together_stop_the_process_in_one_line(module: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env["RAG_EMBEDDER_BACKEND"] = "openai"  # and no RAG_EMBEDDER_BASE_URL
    run = subprocess.run([sys.executable, "-m", module, *(["x.pdf"] if module == "ingest" else [])],
                         env=env, cwd=ROOT, check=False, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "error: RAG_EMBEDDER_BASE_URL: required with RAG_EMBEDDER_BACKEND=openai: the endpoint's base URL"]
