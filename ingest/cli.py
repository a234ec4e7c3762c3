"""``python -m ingest PATH...``: index PDFs (files or folders) through the workers, with progress.

``--delete ID_OR_PATH`` removes a document instead; ``--force`` re-indexes unchanged files;
``--reindex`` re-indexes every indexed document (of ``--collection``, or all) from the file it was
read from, chunked as this release chunks; ``--json`` prints one JSON object per line instead of a
progress bar and a table.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from core.heartbeats import alive_workers
from core.keys import Keys
from core.logs import configure_logging
from core.payload import COLLECTION_NAME, COLLECTION_NAME_RULE, DEFAULT_COLLECTION
from core.redis import connect
from core.settings import Settings, load_or_exit
from ingest.documents import Documents
from ingest.errors import IngestError
from ingest.producer import FileResult, Producer, RunState, expand


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="PDF files or folders of PDFs")
    parser.add_argument("--collection", default=None,
                        help=f"index into this collection (default: '{DEFAULT_COLLECTION}'); letters, digits, _ and -")
    parser.add_argument("--force", action="store_true", help="re-index files even when already indexed unchanged")
    parser.add_argument("--delete", metavar="ID_OR_PATH", action="append", default=[],
                        help="delete a document by id or by the path it was indexed from (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the indexed documents (of --collection, or all)")
    parser.add_argument("--reindex", action="store_true",
                        help="re-index every indexed document (of --collection, or all) from the file it was read "
                             "from: after an upgrade, chunks follow this release's chunking")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a progress bar")
    args = parser.parse_args(argv)
    if not args.paths and not args.delete and not args.list and not args.reindex:
        parser.error("give PDF files or folders to ingest, --delete ID_OR_PATH, --list or --reindex")
    if args.reindex and (args.paths or args.delete):
        parser.error("--reindex takes no paths and no --delete")
    if args.collection is not None and not COLLECTION_NAME.fullmatch(args.collection):
        parser.error(f"--collection: {COLLECTION_NAME_RULE}")
    settings = load_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    try:
        if args.list:
            return asyncio.run(_list(settings, args.collection, args.json))
        if args.delete:
            return asyncio.run(_delete(settings, args.delete, args.collection, args.json))
        if args.reindex:
            return asyncio.run(_reindex(settings, args.collection, args.json))
        files = list(expand(args.paths))
        if not files:
            print("error: no PDF files found in the given paths", file=sys.stderr)
            return 2
        results = asyncio.run(_run(settings, files, args.collection, args.force, args.json))
    except (ConnectionError, OSError) as exc:
        print(f"error: cannot reach Redis at {settings.redis.url}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: files sent in full will still be indexed; the one in progress was dropped", file=sys.stderr)
        return 130
    return 1 if any(r.status == "failed" for r in results) else 0


def _print_json(record: dict[str, Any]) -> None:
    print(msgspec.json.encode(record).decode(), flush=True)


async def _run(settings: Settings, files: list[Path], collection: str | None, force: bool,
               as_json: bool) -> list[FileResult]:
    redis = connect(settings.redis)
    console = Console(stderr=True)
    try:
        await redis.ping()
        if not await alive_workers(redis, Keys(settings.redis.prefix)):
            # Not an error: the chunks wait in Redis; but say why nothing moves yet.
            warning = (f"no worker is running on {settings.redis.url} (prefix {settings.redis.prefix!r}): chunks wait "
                       "in Redis until one starts (python -m workers, or scripts/up); Ctrl-C stops waiting")
            if as_json:
                print(msgspec.json.encode({"event": "warning", "message": warning}).decode(), flush=True)
            else:
                console.print(f"[yellow]warning[/]: {warning}")
        producer = Producer(redis, settings, collection=collection, force=force)
        if as_json:
            def on_update(state: RunState, result: FileResult | None) -> None:
                if result is not None:
                    _print_json({"event": "file", **msgspec.to_builtins(result)})
                else:
                    _print_json({"event": "progress", **msgspec.to_builtins(state)})

            results = await producer.run(files, on_update)
            _print_json({"event": "summary", "files": len(results),
                         "failed": sum(r.status == "failed" for r in results),
                         "unchanged": sum(r.status == "unchanged" for r in results),
                         "chunks": sum(r.chunks for r in results if r.status == "sent"),
                         "pages": sum(r.pages for r in results if r.status == "sent")})
        else:
            with Progress(
                TextColumn("[bold]{task.description:>14}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>14}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=console, transient=False,
            ) as bar:
                file_task = bar.add_task("files", total=len(files), rate="")
                page_task = bar.add_task("pages parsed", total=None, rate="")
                chunk_task = bar.add_task("chunks embedded", total=None, rate="")

                def on_update(state: RunState, result: FileResult | None) -> None:
                    bar.update(file_task, completed=state.files_done)
                    bar.update(page_task, completed=state.pages, total=state.pages_total or None)
                    # Until every file is parsed, the total is estimated from chunks per page so far.
                    total = state.chunks_sent
                    if not state.sealed and state.pages and state.pages_total > state.pages:
                        total = int(state.chunks_sent * state.pages_total / state.pages)
                    bar.update(chunk_task, completed=state.chunks_indexed, total=total or None)
                    for task_id, unit in ((page_task, "pages/s"), (chunk_task, "chunks/s")):
                        speed = bar.tasks[task_id].speed
                        if speed:
                            bar.update(task_id, rate=f"{speed:.0f} {unit}")
                    if result is not None and result.status == "failed":
                        bar.console.print(f"[red]failed[/] {result.path}: {result.code}: {result.message}")
                    elif result is not None and result.skipped_pages:
                        bar.console.print(f"[yellow]skipped pages[/] {result.path}: {result.message}")

                results = await producer.run(files, on_update)
            _summary(console, results)
        return results
    finally:
        await redis.aclose()


async def _reindex(settings: Settings, collection: str | None, as_json: bool) -> int:
    """Every registered document again, from its source file, per collection; a source that is gone fails."""
    redis = connect(settings.redis)
    try:
        records = await Documents(redis, settings).all(collection)
    finally:
        await redis.aclose()
    by_collection: dict[str, list[Path]] = {}
    missing = []
    for record in records:
        source = Path(record.source)
        if source.is_file():
            by_collection.setdefault(record.collection, []).append(source)
        else:
            missing.append(FileResult(path=record.source, status="failed", document_id=record.id,
                                      code="file_not_found", message=f"{record.file} ({record.collection}) was read "
                                      f"from {record.source}, which is gone: upload it again to re-index it"))
    results = list(missing)
    for name, files in sorted(by_collection.items()):
        results += await _run(settings, sorted(set(files)), name, True, as_json)
    for result in missing:
        if as_json:
            _print_json({"event": "file", **msgspec.to_builtins(result)})
        else:
            Console(stderr=True).print(f"[red]failed[/] {result.path}: {result.code}: {result.message}")
    if not records:
        print("nothing to re-index: no document is registered" + (f" in {collection!r}" if collection else ""),
              file=sys.stderr)
    return 1 if any(r.status == "failed" for r in results) else 0


async def _delete(settings: Settings, targets: list[str], collection: str | None, as_json: bool) -> int:
    redis = connect(settings.redis)
    console = Console(stderr=True)
    failed = 0
    try:
        await redis.ping()
        documents = Documents(redis, settings)
        for target in targets:
            record = await _delete_one(documents, target, collection)
            failed += record["status"] == "failed"
            if as_json:
                _print_json(record)
            elif record["status"] == "deleted":
                console.print(f"deleted {record['document_id']} ({target}): {record['chunks']} chunks")
            else:
                console.print(f"[red]failed[/] {target}: {record['code']}: {record['message']}")
    finally:
        await redis.aclose()
    return 1 if failed else 0


async def _delete_one(documents: Documents, target: str, collection: str | None) -> dict[str, Any]:
    document_id = await documents.resolve(target, collection)
    try:
        points = await documents.delete(document_id, collection) if document_id else None
    except IngestError as exc:
        return {"event": "delete", "target": target, "status": "failed", "code": exc.code, "message": exc.message}
    if points is None:
        return {"event": "delete", "target": target, "status": "failed", "code": "document_not_found",
                "message": f"no document {target!r} in collection {collection or DEFAULT_COLLECTION!r}"}
    return {"event": "delete", "target": target, "status": "deleted", "document_id": document_id, "chunks": points}


async def _list(settings: Settings, collection: str | None, as_json: bool) -> int:
    redis = connect(settings.redis)
    try:
        records = await Documents(redis, settings).all(collection)
    finally:
        await redis.aclose()
    if as_json:
        for record in records:
            _print_json({"event": "document", **msgspec.to_builtins(record)})
        return 0
    table = Table(title=f"{len(records)} document(s)")
    for column in ("id", "collection", "file", "status", "pages", "chunks", "source"):
        table.add_column(column)
    for r in records:
        status = r.status if r.status != "failed" else f"failed: {r.error_code}"
        table.add_row(r.id, r.collection, r.file, status, str(r.pages), str(r.chunks), r.source)
    Console().print(table)
    return 0


def _summary(console: Console, results: list[FileResult]) -> None:
    table = Table(title="ingest summary")
    for column in ("file", "status", "pages", "chunks", "document id / note"):
        table.add_column(column)
    for r in results:
        status = {"sent": "indexed"}.get(r.status, r.status)
        if r.status == "failed":
            detail = f"{r.code}: {r.message}"
        else:
            detail = r.document_id or ""
            if r.skipped_pages:
                detail += f" ({len(r.skipped_pages)} page(s) skipped: no text layer, no OCR)"
            if r.nav_pages:
                detail += f" ({len(r.nav_pages)} contents/index page(s) left out)"
            if r.status == "unchanged":
                detail += " (already indexed; --force re-indexes)"
        style = {"failed": "red", "unchanged": "dim"}.get(r.status, "")
        table.add_row(r.path, f"[{style}]{status}[/]" if style else status, str(r.pages), str(r.chunks), detail)
    console.print(table)
    failed = sum(r.status == "failed" for r in results)
    console.print(f"{len(results)} file(s): {len(results) - failed} ok, {failed} failed")
