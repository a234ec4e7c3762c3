"""``python -m bench [NAME...] [--quick]``: run benchmarks, each figure next to its baseline, as a markdown table."""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack
from pathlib import Path

from bench.harness import Context, DidNotFinish, Row, check_rows, cpu_model, valkey
from core.loop import run
from tests.servers import ROOT

#: name -> (module, what it measures); run in this order.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "queue": ("bench.queue", ("questions with the least work at 64 in flight: our worker via Redis Streams and via "
              "HTTP+SSE, vs RQ and ARQ running no-op jobs")),
    "auth": ("bench.auth", ("API keys: /v1/ask at 64 in flight through a key (lookup and token bucket, one Lua script a "
             "request) vs RAG_API_AUTH=off, and a loopback API with no key yet")),
    "tokens": ("bench.tokens", "token relay: fake LLM as fast as it can -> worker -> Redis -> API -> SSE client"),
    "fanout": ("bench.fanout", "SSE fan-out: open streams on one API process, memory per stream, Redis connections"),
    "batching": ("bench.batching", "worker embedding chunks/s vs raw ONNX; extractive questions/s at 1, 8, 64"),
    "ingest": ("bench.ingestion", "parse+chunk pages/s vs raw PyMuPDF; end-to-end pages/s with embedding"),
    "memory": ("bench.memory", "a 2,400-page PDF through python -m ingest: its peak RSS, the worker's RSS, the Redis window"),
    "llm": ("bench.llm", "local SmolLM2 (llama_cpp.server): TTFT and tokens/s, 1 and 4 concurrent, direct vs service"),
    "backlog": ("bench.backlog", "queries first: time to first token with a 10,000-chunk ingest backlog vs none"),
    "store": ("bench.store", ("the embedded store at 200,000 chunks: a collection-filtered hybrid search, indexed and "
              "optimized vs the previous store")),
    "retrieval": ("bench.retrieval", "retrieval quality on the dossier-bench dev set (hit@k, MRR, latency)"),
    "answers": ("bench.answers", ("answer quality on dossier-bench's QA scenarios through /v1/ask: must-facts, "
                "citations, not-found, injections, TTFT; extractive and SmolLM2")),
    "followups": ("bench.followups", ("follow-up questions through /v1/chat/completions: the facts their sources hold "
                  "with the last question alone, the rule, and SmolLM2's rewrite")),
}


def measure(name: str, ctx: Context) -> list[Row]:
    """One benchmark's rows, checked: BenchmarkError (DidNotFinish) if it or a baseline failed or measured nothing."""
    module = importlib.import_module(BENCHMARKS[name][0])
    # The service's own loop (uvloop) for every load generator, ours and the baselines'.
    rows: list[Row] = run(module.run(ctx))
    check_rows(name, rows)
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| benchmark | measure | ours | baseline (same run) | ours vs baseline |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r.bench} | {r.measure} | {r.ours} | {r.baseline} | {r.ratio} |")
    return "\n".join(lines)


def code_version() -> str:
    """The commit measured, and whether the service code had uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "not a git checkout"
    dirty = git("status", "--porcelain", "--", "core", "app", "workers", "ingest")
    return f"commit {commit}" + (" with uncommitted changes in core/, app/, workers/ or ingest/" if dirty else "")


def header(command: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"- date: {now}\n- machine: {os.cpu_count()} cores, {cpu_model()} (load average at start {load}; "
            f"shared with other work, so compare figures only with the baselines in the same run)\n"
            f"- python: {sys.version.split()[0]}\n- code: {code_version()}\n- command: `{command}`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__,
        epilog="benchmarks: " + "; ".join(f"{k}: {v[1]}" for k, v in BENCHMARKS.items()),
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all): "
                        f"{', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true",
                        help="short windows and smaller inputs, indicative only (about 17 minutes on 2 shared cores)")
    parser.add_argument("--skip", action="append", default=[], metavar="NAME", help="leave out a benchmark")
    parser.add_argument("--output", type=Path, default=None,
                        help="also write the results (date, machine, command, table) to this markdown file")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names + args.skip if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHMARKS)}")
    names = [n for n in (args.names or list(BENCHMARKS)) if n not in args.skip]
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    rows: list[Row] = []
    failures: list[str] = []
    started = time.perf_counter()
    about = header(command)  # now: the date and load average at the start
    with tempfile.TemporaryDirectory(prefix="rag-bench-") as tmp, ExitStack() as run_stack:
        redis_url = run_stack.enter_context(valkey(Path(tmp)))
        for name in names:
            t0 = time.perf_counter()
            print(f"# {name}: {BENCHMARKS[name][1]}", file=sys.stderr, flush=True)
            with ExitStack() as stack:
                ctx = Context(quick=args.quick, tmp=Path(tmp), redis_url=redis_url, stack=stack)
                try:
                    got = measure(name, ctx)
                except DidNotFinish as exc:
                    failures.append(name)
                    got = [Row(bench=name, measure="did not finish", ours=str(exc)[:300])]
                except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
                    traceback.print_exc()
                    failures.append(name)
                    got = [Row(bench=name, measure="failed", ours=f"{type(exc).__name__}: {exc}"[:300])]
            rows.extend(got)
            print(f"#   {name} took {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            for row in got:
                print(f"#   {row.measure}: {row.ours} | {row.baseline} | {row.ratio}", file=sys.stderr, flush=True)
    result = about + f"\n- took: {time.perf_counter() - started:.0f} s\n\n" + table(rows)
    print(result)
    if args.output:
        args.output.write_text(f"# Benchmark results\n\n{result}\n")
    return 1 if failures else 0
