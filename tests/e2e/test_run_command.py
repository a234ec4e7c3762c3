"""``scripts/up`` itself: its processes under the real supervisord, on free ports, as a user runs it.

The LLM is left out (``RAG_LLM_BACKEND=extractive``): it is one more program of the same kind,
and test_local_llm covers it.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import child_env
from tests.pdfs import write_pdf
from tests.servers import ROOT, free_port

pytestmark = pytest.mark.e2e


#: In a session of its own (start_new_session): takes the pty on fd 0 as its controlling terminal, as a
#: terminal emulator's shell has one (Ctrl-C and the hangup then reach its foreground process group),
#: resets SIGHUP and SIGINT, then becomes the given command (same pid).
_AS_FROM_A_TERMINAL = ("import fcntl, os, signal, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                       "[signal.signal(s, signal.SIG_DFL) for s in (signal.SIGHUP, signal.SIGINT)]; "
                       "os.execv(sys.argv[1], sys.argv[1:])")


class Run:
    """``scripts/up`` in a terminal of its own (a pty), its screen copied to ``up.log``."""

    def __init__(self, tmp: Path, **extra: str) -> None:
        self.port = free_port()
        self.data = tmp / "data"
        self.env = child_env({"RAG_DATA_DIR": str(self.data), "RAG_API_PORT": str(self.port),
                              "RAG_LLM_BACKEND": "extractive", **extra})
        self.env["VALKEY_PORT"] = str(free_port())
        self.log = tmp / "up.log"
        # As from a terminal: SIGHUP and SIGINT at their defaults (a shell cannot trap a signal ignored
        # when it starts, and a test runner started in the background or under nohup ignores them).
        up = str(ROOT / "scripts" / "up")
        self.terminal, screen = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-c", _AS_FROM_A_TERMINAL, up], cwd=ROOT, env=self.env,
                                     stdin=screen, stdout=screen, stderr=screen, start_new_session=True)
        os.close(screen)
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._copy_screen, daemon=True)
        self._reader.start()

    def _copy_screen(self) -> None:
        # Never blocked in read(): a read in progress would hold the terminal open past close_terminal().
        with self.log.open("wb") as log:
            while not self._closing.is_set():
                if not select.select([self.terminal], [], [], 0.05)[0]:
                    continue
                try:
                    data = os.read(self.terminal, 65536)
                except OSError:  # EIO: every process of the terminal has let go of it
                    return
                if not data:
                    return
                log.write(data.replace(b"\r\n", b"\n"))
                log.flush()

    def close_terminal(self) -> int:
        """The user closes the terminal window: the kernel hangs the terminal up (SIGHUP to its
        processes), and whatever still writes to it gets EIO."""
        self._closing.set()
        self._reader.join()
        os.close(self.terminal)
        return self.proc.wait(timeout=60)

    def ctrl_c(self) -> int:
        """Ctrl-C typed in the terminal: SIGINT to its foreground process group."""
        os.write(self.terminal, b"\x03")
        return self.proc.wait(timeout=60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ctl(self, *args: str) -> str:
        conf = self.data / "run" / "supervisord.conf"
        return subprocess.run([str(ROOT / ".venv" / "bin" / "supervisorctl"), "-c", str(conf), *args],
                              capture_output=True, text=True, check=False, timeout=30).stdout

    def pid(self, name: str) -> int:
        out = self.ctl("pid", name).strip()
        return int(out) if out.isdigit() else 0

    def until(self, what: str, check, timeout: float = 90.0):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"scripts/up exited ({self.proc.returncode}) waiting for {what}:\n{self.output()}")
            try:
                if value := check():
                    return value
            except (httpx.HTTPError, OSError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"no {what} within {timeout} s:\n{self.output()[-3000:]}")

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200

    def pids(self) -> set[int]:
        """supervisord and every process under it (its session)."""
        sid = os.getsid(int((self.data / "run" / "supervisord.pid").read_text()))
        out = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getsid(int(entry.name)) == sid:
                        out.add(int(entry.name))
                except (ProcessLookupError, PermissionError):
                    pass
        return out

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def gone(self, pids: set[int], timeout: float = 30.0) -> list[int]:
        """Those of ``pids`` still alive after ``timeout``."""
        deadline = time.monotonic() + timeout
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        return [p for p in pids if alive(p)]


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    r = Run(tmp_path)
    try:
        yield r
    finally:
        if r.proc.poll() is None:
            r.stop(signal.SIGTERM)


def ask(run: Run, question: str) -> dict:  # type: ignore[type-arg]
    response = httpx.post(f"{run.url}/v1/ask", json={"question": question}, timeout=60)
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    import json

    return json.loads(events[-1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_killed_processes_come_back_and_a_closed_terminal_leaves_nothing(run: Run, tmp_path: Path) -> None:
    run.until("the service", run.ready)
    assert "Starting: valkey worker api under supervisord" in run.output()
    ingest = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "ingest", "--json",
                             str(write_pdf(tmp_path / "facts.pdf"))], env={**run.env, "RAG_REDIS_URL":
                            f"redis://127.0.0.1:{run.env['VALKEY_PORT']}/0"}, cwd=ROOT, capture_output=True, check=False,
                            text=True, timeout=120)
    assert ingest.returncode == 0, ingest.stderr
    assert "Zephyr" in ask(run, "What does the Zephyr turbine generate?")["answer"]

    # kill -9 the worker (the OOM killer, a crash in a native library): it is started again, nothing else stops.
    worker, api = run.pid("worker"), run.pid("api")
    os.kill(worker, signal.SIGKILL)
    run.until("a new worker", lambda: run.pid("worker") not in (0, worker))
    assert run.pid("api") == api
    run.until("the service again", run.ready)
    assert "Zephyr" in ask(run, "What does the Zephyr turbine generate?")["answer"]

    # The API too.
    os.kill(api, signal.SIGKILL)
    run.until("a new API", lambda: run.pid("api") not in (0, api))
    run.until("the service again", run.ready)
    assert "Zephyr" in ask(run, "What does the Zephyr turbine generate?")["answer"]
    assert "exited: worker (terminated by SIGKILL; not expected)" in run.output()

    # A second scripts/up says so in one line, and where, instead of failing on a port in use.
    second = subprocess.run([str(ROOT / "scripts" / "up")], cwd=ROOT, env=run.env, capture_output=True, check=False,
                            text=True, timeout=120)
    assert second.returncode == 1
    assert "already running" in second.stderr and str(run.data) in second.stderr
    assert second.stderr.strip().count("\n") == 0

    # Closing the terminal (SIGHUP, and the screen gone) stops everything: no process left, the ports free again.
    pids = run.pids()
    assert len(pids) >= 4  # supervisord, Valkey, the worker, the API (and their log prefixers)
    run.close_terminal()
    assert not run.gone(pids)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{run.url}/healthz", timeout=2)
    # One line per event, with the process's name.
    assert any(line.split()[1:3] == ["worker", "|"] for line in run.output().splitlines() if line[:2].isdigit())


def test_a_process_that_fails_at_start_is_given_up_on_and_ctrl_c_stops_the_rest(tmp_path: Path) -> None:
    run = Run(tmp_path, RAG_WORKER_BATCH_SIZE="0")  # invalid: the worker (and the API) exit at once
    try:
        run.until("supervisord to give up on the worker",
                  lambda: "gave up: worker entered FATAL state" in run.output(), timeout=180)
        pids = run.pids()
        run.ctrl_c()
        assert not run.gone(pids)
    finally:
        if run.proc.poll() is None:
            run.stop(signal.SIGTERM)


def test_kill_9_the_worker_while_20_questions_stream_every_one_completes_once(tmp_path: Path) -> None:
    """The restarted worker takes its name back (its holder is gone) and resumes that name's jobs at once:
    long before the claim timeout (60 s), every question has a restart event and exactly one done."""
    import json

    import redis

    from core.keys import Keys
    from tests.fake_openai import create_fake_openai
    from tests.servers import ThreadedUvicorn

    app = create_fake_openai()
    app.state.token_delay, app.state.repeat = 0.03, 8  # answers of ~8 s
    with ThreadedUvicorn(app) as llm:
        run = Run(tmp_path, RAG_LLM_BACKEND="openai", RAG_LLM_BASE_URL=f"{llm.url}/v1",
                  RAG_WORKER_MAX_GENERATIONS="20", RAG_REDIS_PREFIX="resume")
        try:
            run.until("the service", run.ready)
            redis_url = f"redis://127.0.0.1:{run.env['VALKEY_PORT']}/0"
            ingest = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "ingest",
                                     str(write_pdf(tmp_path / "facts.pdf"))], env={**run.env, "RAG_REDIS_URL": redis_url},
                                    cwd=ROOT, capture_output=True, check=False, text=True, timeout=120)
            assert ingest.returncode == 0, ingest.stderr
            ids = [httpx.post(f"{run.url}/v1/queries", json={"question": "What does the Zephyr turbine generate?"},
                              timeout=10).json()["id"] for _ in range(20)]
            r = redis.Redis.from_url(redis_url)
            keys = Keys("resume")

            def kinds(job_id: str) -> list[bytes]:
                return [f[b"type"] for _, f in r.xrange(keys.events(job_id))]

            run.until("answers streaming", lambda: sum(b"token" in kinds(i) for i in ids) >= 10)
            worker = run.pid("worker")
            os.kill(worker, signal.SIGKILL)
            killed_ms = time.time() * 1000
            run.until("every answer", lambda: all(b"done" in kinds(i) for i in ids), timeout=50)
            restarts = []
            for job_id in ids:
                events = r.xrange(keys.events(job_id))
                assert [f[b"type"] for _, f in events].count(b"done") == 1
                restarts += [int(e.split(b"-")[0]) - killed_ms for e, f in events if f[b"type"] == b"restart"]
            started = [json.loads(line.split("| ", 1)[1])["timestamp"] for line in run.output().splitlines()
                       if "worker |" in line and '"worker_started"' in line][-1]
            from datetime import datetime

            startup_ms = datetime.fromisoformat(started).timestamp() * 1000 - killed_ms
            restarts.sort()
            print(f"\nkill -9 -> restart event: p50 {restarts[len(restarts) // 2]:.0f} ms, max {restarts[-1]:.0f} ms "
                  f"over {len(restarts)} interrupted answers; the worker's own start-up: {startup_ms:.0f} ms")
            assert len(restarts) >= 10  # the ones that were streaming were resumed, each once

            # The API killed while 10 clients stream: each reconnects with Last-Event-ID and loses nothing.
            import threading

            jobs = [httpx.post(f"{run.url}/v1/queries", json={"question": "What does the Zephyr turbine generate?"},
                               timeout=10).json()["id"] for _ in range(10)]
            got: dict[str, list[tuple[str, str, dict]]] = {j: [] for j in jobs}  # type: ignore[type-arg]
            reconnects: dict[str, int] = dict.fromkeys(jobs, 0)

            def client(job_id: str) -> None:
                """What a resuming SSE client does: on a broken stream, reconnect with the last id seen."""
                mine = got[job_id]
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    headers = {"Last-Event-ID": mine[-1][0]} if mine else {}
                    try:
                        with httpx.stream("GET", f"{run.url}/v1/queries/{job_id}/events", headers=headers,
                                          timeout=30) as response:
                            event_id = kind = ""
                            for line in response.iter_lines():
                                if line.startswith("id: "):
                                    event_id = line[4:]
                                elif line.startswith("event: "):
                                    kind = line[7:]
                                elif line.startswith("data: "):
                                    mine.append((event_id, kind, json.loads(line[6:])))
                                    if kind == "done":
                                        return
                    except httpx.HTTPError:
                        pass
                    reconnects[job_id] += 1
                    time.sleep(0.2)

            threads = [threading.Thread(target=client, args=(j,)) for j in jobs]
            for t in threads:
                t.start()
            run.until("the clients streaming", lambda: all(any(k == "token" for _, k, _ in got[j]) for j in jobs))
            api = run.pid("api")
            os.kill(api, signal.SIGKILL)
            for t in threads:
                t.join(timeout=100)
            for job_id, events in got.items():
                event_ids = [i for i, _, _ in events]
                assert len(event_ids) == len(set(event_ids)) and events[-1][1] == "done", job_id
                assert "".join(d["text"] for _, k, d in events if k == "token") == events[-1][2]["answer"]
            assert sum(1 for n in reconnects.values() if n) >= 5  # they really were cut off and came back

            # SIGTERM (a service manager, `kill`) stops everything too.
            pids = run.pids()
            run.stop(signal.SIGTERM)
            assert not run.gone(pids)
        finally:
            if run.proc.poll() is None:
                run.stop(signal.SIGTERM)
