"""`python -m app` on SIGTERM: open SSE streams end cleanly, the process exits 0, the client resumes."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import httpx
from httpx_sse import connect_sse

from tests.conftest import child_env, settings_env
from tests.servers import Proc, free_port, wait_for_port


def test_sigterm_ends_open_streams_cleanly(redis_url: str, prefix: str, tmp_path: Path) -> None:
    port = free_port()
    env = child_env(settings_env(redis_url, prefix, tmp_path, api_port=str(port)))
    api = Proc([sys.executable, "-m", "app"], env, tmp_path / "api.log")
    wait_for_port(port, proc=api.proc)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        job_id = client.post("/v1/queries", json={"question": "nobody answers this"}).json()["id"]
        with connect_sse(client, "GET", f"/v1/queries/{job_id}/events") as source:
            assert source.response.status_code == 200  # the stream is open: its headers came
            api.proc.send_signal(signal.SIGTERM)
            events = list(source.iter_sse())  # ends without a transport error
        assert events == []
    assert api.proc.wait(10) == 0
    assert "Application shutdown complete" in api.output()
