"""With CI set a skip fails, however it is made: in a test, by a marker or a fixture, or for a whole module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.servers import ROOT

#: Tests that skip, and the reason each gives.
SKIPPING_TESTS = '''
import pytest

def test_in_body():
    pytest.skip("no tesseract")

@pytest.mark.skipif(True, reason="no redis-server")
def test_marker():
    pass

@pytest.fixture
def server():
    pytest.skip("no llama_cpp")

def test_fixture(server):
    pass
'''
REASONS = ["no tesseract", "no redis-server", "no llama_cpp"]
#: A module skipped as it is collected: under CI that stops the run, so it gets a run of its own.
SKIPPING_MODULE = 'import pytest\n\npytest.importorskip("no_such_module_anywhere")\n\ndef test_it():\n    pass\n'


def run_pytest_under_ci(test_file: Path, source: str) -> subprocess.CompletedProcess[str]:
    test_file.parent.mkdir(exist_ok=True)
    test_file.write_text(source)
    (test_file.parent / "pytest.ini").write_text("[pytest]\n")  # not the project's settings: its conftest's hooks
    env = os.environ | {"CI": "true"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           str(test_file)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_every_kind_of_skip_fails_under_ci(tmp_path: Path) -> None:
    ci = run_pytest_under_ci(tmp_path / "tests" / "test_skips.py", SKIPPING_TESTS)
    assert ci.returncode == 1 and "1 failed, 2 errors" in ci.stdout, ci.stdout  # in its body; in its setup
    for reason in REASONS:
        assert f"skipped under CI, which must run it: {reason}" in ci.stdout, ci.stdout
    ci = run_pytest_under_ci(tmp_path / "module" / "test_module.py", SKIPPING_MODULE)
    assert ci.returncode != 0, ci.stdout
    assert "skipped under CI, which must run it: could not import 'no_such_module_anywhere'" in ci.stdout, ci.stdout
