"""Ingestion: parse+chunk pages/s (the ingest package's own code) vs raw PyMuPDF page.get_text(); end to end.

The PDFs are generated (bench.corpus): several documents of many pages of English-like
text, as many table-heavy ones (every page a ruled table between two paragraphs), chart-heavy
ones (a scatter plot of thousands of marks a page: line art that is no table);
and dossier-bench's 22 real-looking PDFs (contracts, reports, invoices, scans). Each set
is timed against raw get_text on the same files, best of several rounds; the table-heavy set
also against tables read the plain way (page.find_tables() and to_markdown() on every page). End to end is
``ingest.producer.Producer.run`` (what ``python -m ingest`` runs) against
``python -m workers`` (ONNX embedder, qdrant-edge), until every chunk is indexed; its
baseline is the raw pipeline in one process: get_text on every page, then
OnnxEmbedder.embed_sync on the ingest chunks (of the English-like set).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pymupdf

from bench.corpus import write_chart_pdfs, write_pdfs, write_table_pdfs
from bench.harness import Context, Row, ratio, service_env, settings_of, start_worker
from bench.retrieval import case_pdfs
from core.redis import connect
from core.settings import Settings
from ingest.chunker import TokenCounter
from ingest.parse import parse
from ingest.pdf import PdfReader
from ingest.producer import Producer
from workers.embedder import OnnxEmbedder


def raw_pages(paths: list[Path], *, tables: bool = False) -> int:
    """get_text on every page; with ``tables``, also what the issue names for them, done plainly:
    page.find_tables() and each table's markdown."""
    pages = 0
    for path in paths:
        with pymupdf.open(path) as doc:
            for page in doc:
                page.get_text()
                if tables:
                    for table in page.find_tables(use_layout=False).tables:
                        table.to_markdown()
                pages += 1
    return pages


def chunk_texts(path: Path, settings: Settings, counter: TokenCounter) -> Iterator[str]:
    """The ingest package's parse+chunk of one file: what Producer runs for every file it sends."""
    ingest = settings.ingest
    with PdfReader(path, max_bytes=ingest.max_file_mb * 1024 * 1024) as reader:
        for chunk in parse(reader, ingest, counter):
            yield chunk.text


def dossier_pdfs() -> list[Path]:
    """Every PDF of every dossier-bench case (the bench extra installs it)."""
    from dossier_bench.cases import Case, available

    return [path for name in available() for path in case_pdfs(Case.load(name).dir)]


def timed(fn, rounds: int) -> float:  # type: ignore[no-untyped-def]
    """Best of ``rounds`` wall times: the least disturbed by the other work on this machine."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


async def run(ctx: Context) -> list[Row]:
    docs, pages = (2, 10) if ctx.quick else (3, 25)
    work = ctx.dir("ingest")
    paths = write_pdfs(work / "pdfs", docs=docs, pages=pages)
    total = docs * pages
    env = service_env(ctx.redis_url, ctx.prefix("ingest"), work / "data")
    settings = settings_of(env)

    texts: list[str] = []
    counter = TokenCounter.minilm()  # loaded once per run by the producer too

    def ours() -> None:
        texts[:] = [t for p in paths for t in chunk_texts(p, settings, counter)]

    raw_s = timed(lambda: raw_pages(paths), 5)
    ours_s = timed(ours, 5)
    table_paths = write_table_pdfs(work / "tables", docs=docs, pages=pages)
    table_chunks = [t for p in table_paths for t in chunk_texts(p, settings, counter)]
    table_raw_s = timed(lambda: raw_pages(table_paths), 5)
    table_ours_s = timed(lambda: [t for p in table_paths for t in chunk_texts(p, settings, counter)], 5)
    table_plain_s = timed(lambda: raw_pages(table_paths, tables=True), 1)  # a hundred times slower: once is enough

    chart_paths = write_chart_pdfs(work / "charts", docs=1, pages=4 if ctx.quick else 10)
    chart_pages = raw_pages(chart_paths)
    chart_raw_s = timed(lambda: raw_pages(chart_paths), 5)
    chart_ours_s = timed(lambda: [t for p in chart_paths for t in chunk_texts(p, settings, counter)], 5)

    # Scanned pages are skipped, not OCRed, on both sides: raw get_text reads nothing from them either.
    dossier_settings = settings_of(service_env(ctx.redis_url, ctx.prefix("ingest"), work / "data", ingest_ocr="false"))
    dossier_paths = dossier_pdfs()
    dossier_pages = raw_pages(dossier_paths)
    dossier_chunks = [t for p in dossier_paths for t in chunk_texts(p, dossier_settings, counter)]
    dossier_raw_s = timed(lambda: raw_pages(dossier_paths), 15)
    dossier_ours_s = timed(lambda: [t for p in dossier_paths for t in chunk_texts(p, dossier_settings, counter)], 15)

    embedder = OnnxEmbedder(settings.embedder)
    embedder.embed_sync(texts[:32])
    t0 = time.perf_counter()
    embedder.embed_sync(texts)
    embed_s = time.perf_counter() - t0
    del embedder

    start_worker(ctx, env, work / "worker.log")
    redis = connect(settings.redis)
    try:
        t0 = time.perf_counter()
        results = await Producer(redis, settings).run(paths, lambda state, result: None)
        e2e_s = time.perf_counter() - t0
    finally:
        await redis.aclose()
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise RuntimeError(f"ingest failed: {failed[0]}")
    return [
        Row(bench="ingest", measure=f"parse+chunk, {docs} PDFs x {pages} pages (ingest code) vs raw PyMuPDF "
            "page.get_text()", ours=f"{total / ours_s:,.0f} pages/s ({len(texts)} chunks)",
            baseline=f"{total / raw_s:,.0f} pages/s", ratio=ratio(total / ours_s, total / raw_s)),
        Row(bench="ingest", measure=f"parse+chunk, table-heavy: {docs} PDFs x {pages} pages, each a ruled table "
            "between paragraphs (ingest code) vs raw PyMuPDF page.get_text()",
            ours=f"{total / table_ours_s:,.0f} pages/s ({len(table_chunks)} chunks)",
            baseline=f"{total / table_raw_s:,.0f} pages/s", ratio=ratio(total / table_ours_s, total / table_raw_s)),
        Row(bench="ingest", measure="parse+chunk, table-heavy (as above) vs get_text + PyMuPDF page.find_tables() "
            "+ Table.to_markdown() on every page", ours=f"{total / table_ours_s:,.0f} pages/s",
            baseline=f"{total / table_plain_s:,.1f} pages/s", ratio=ratio(total / table_ours_s, total / table_plain_s)),
        Row(bench="ingest", measure=f"parse+chunk, chart-heavy: {chart_pages} pages, each a scatter plot of 2,000 "
            "marks (its own path each) between paragraphs (ingest code) vs raw PyMuPDF page.get_text()",
            ours=f"{chart_pages / chart_ours_s:,.0f} pages/s", baseline=f"{chart_pages / chart_raw_s:,.0f} pages/s",
            ratio=ratio(chart_pages / chart_ours_s, chart_pages / chart_raw_s)),
        Row(bench="ingest", measure=f"parse+chunk, dossier-bench: {len(dossier_paths)} PDFs, {dossier_pages} pages, "
            "OCR off (ingest code) vs raw PyMuPDF page.get_text()",
            ours=f"{dossier_pages / dossier_ours_s:,.0f} pages/s ({len(dossier_chunks)} chunks)",
            baseline=f"{dossier_pages / dossier_raw_s:,.0f} pages/s",
            ratio=ratio(dossier_pages / dossier_ours_s, dossier_pages / dossier_raw_s)),
        Row(bench="ingest", measure="end to end: Producer.run -> worker embeds and indexes every chunk, vs raw "
            "get_text + embed_sync in one process", ours=f"{total / e2e_s:,.1f} pages/s",
            baseline=f"{total / (raw_s + embed_s):,.1f} pages/s", ratio=ratio(total / e2e_s, total / (raw_s + embed_s))),
    ]
