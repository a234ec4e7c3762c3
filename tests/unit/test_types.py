"""The packages type-check under ``mypy --strict`` (settings in pyproject.toml): a type error fails the suite, and CI."""

from __future__ import annotations

import subprocess
import sys

from tests.servers import ROOT


def test_core_app_workers_and_ingest_type_check_strictly() -> None:
    run = subprocess.run([sys.executable, "-m", "mypy", "--strict"], cwd=ROOT, check=False, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Success: no issues found" in run.stdout
