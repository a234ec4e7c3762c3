"""``python -m ingest PATH...``: index PDFs (files or folders) through the workers, with progress."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from core.logs import configure_logging
from core.redis import connect
from core.settings import Settings, SettingsError, load_settings
from ingest.producer import FileResult, Producer, RunState, expand


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest", description=__doc__)
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="PDF files or folders of PDFs")
    parser.add_argument("--collection", default=None, help="index into this collection (default: 'default')")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a progress bar")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    files = list(expand(args.paths))
    if not files:
        print("error: no PDF files found in the given paths", file=sys.stderr)
        return 2
    try:
        results = asyncio.run(_run(settings, files, args.collection, args.json))
    except (ConnectionError, OSError) as exc:
        print(f"error: cannot reach Redis at {settings.redis.url}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: chunks already sent will still be indexed", file=sys.stderr)
        return 130
    return 1 if any(r.status == "failed" for r in results) else 0


async def _run(settings: Settings, files: list[Path], collection: str | None, as_json: bool) -> list[FileResult]:
    redis = connect(settings.redis)
    console = Console(stderr=True)
    try:
        await redis.ping()
        producer = Producer(redis, settings, collection=collection)
        if as_json:
            def on_update(state: RunState, result: FileResult | None) -> None:
                record = {"event": "file", **msgspec.to_builtins(result)} if result else {
                    "event": "progress", **msgspec.to_builtins(state)}
                print(msgspec.json.encode(record).decode(), flush=True)

            results = await producer.run(files, on_update)
        else:
            with Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=console, transient=False,
            ) as bar:
                file_task = bar.add_task("files", total=len(files), rate="")
                chunk_task = bar.add_task("chunks indexed", total=None, rate="")

                def on_update(state: RunState, result: FileResult | None) -> None:
                    bar.update(file_task, completed=state.files_done)
                    bar.update(chunk_task, completed=state.chunks_indexed,
                               total=state.chunks_sent if state.sealed or state.chunks_sent else None)
                    task = bar.tasks[chunk_task]
                    if task.speed:
                        bar.update(chunk_task, rate=f"{task.speed:.0f} chunks/s")
                    if result and result.status == "failed":
                        bar.console.print(f"[red]failed[/] {result.path}: {result.code}: {result.message}")

                results = await producer.run(files, on_update)
            _summary(console, results)
        return results
    finally:
        await redis.aclose()


def _summary(console: Console, results: list[FileResult]) -> None:
    table = Table(title="ingest summary")
    for column in ("file", "status", "pages", "chunks", "document id / error"):
        table.add_column(column)
    for r in results:
        detail = r.document_id or "" if r.status != "failed" else f"{r.code}: {r.message}"
        table.add_row(r.path, r.status if r.status != "sent" else "indexed", str(r.pages), str(r.chunks), detail)
    console.print(table)
