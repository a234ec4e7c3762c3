"""Ingestion: parse+chunk pages/s (the ingest package's own code) against PyMuPDF read plainly; end to end.

The PDFs are generated (bench.corpus): several documents of many pages of English-like
text, as many table-heavy ones (every page a ruled table between two paragraphs), chart-heavy
ones (a scatter plot of thousands of marks a page: line art that is no table);
and dossier-bench's 22 real-looking PDFs (contracts, reports, invoices, scans). Each set is timed
against its target baseline on the same files, best of several rounds, as the developers decided:
pages with tables against PyMuPDF's own way of reading them (get_text, then page.find_tables() and
each table's to_markdown(), on every page), pages without (prose, charts, dossier-bench) against
raw get_text. End to end is
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
from bench.harness import Context, Row, index_pdfs, ratio, service_env, settings_of, start_worker
from bench.retrieval import case_pdfs
from core.settings import Settings
from ingest.chunker import TokenCounter
from ingest.parse import parse
from ingest.pdf import PdfReader
from workers.embedder import OnnxEmbedder

RAW = "raw PyMuPDF page.get_text()"
PLAIN_TABLES = "PyMuPDF's own way with tables: get_text + page.find_tables() + Table.to_markdown() on every page"


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


def dossier_row(ctx: Context, work: Path, counter: TokenCounter) -> Row:
    """Parse+chunk of dossier-bench's PDFs vs raw get_text, OCR off on both sides."""
    settings = settings_of(service_env(ctx.redis_url, ctx.prefix("ingest"), work / "data", ingest_ocr="false"))
    paths = dossier_pdfs()
    pages = raw_pages(paths)
    chunks = [t for p in paths for t in chunk_texts(p, settings, counter)]
    raw_s = timed(lambda: raw_pages(paths), 15)
    ours_s = timed(lambda: [t for p in paths for t in chunk_texts(p, settings, counter)], 15)
    return Row(bench="ingest", measure=f"parse+chunk, dossier-bench: {len(paths)} PDFs, {pages} pages, OCR off "
               f"(ingest code) vs {RAW} (no table read)", ours=f"{pages / ours_s:,.0f} pages/s ({len(chunks)} chunks)",
               baseline=f"{pages / raw_s:,.0f} pages/s", ratio=ratio(pages / ours_s, pages / raw_s))


def timed(fn, rounds: int) -> float:  # type: ignore[no-untyped-def]
    """Best of ``rounds`` wall times: the least disturbed by the other work on this machine."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


async def run(ctx: Context) -> list[Row]:
    docs, pages = (1, 4) if ctx.smoke else (2, 10) if ctx.quick else (3, 25)
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

    chart_paths = write_chart_pdfs(work / "charts", docs=1, pages=2 if ctx.smoke else 4 if ctx.quick else 10)
    chart_pages = raw_pages(chart_paths)
    chart_raw_s = timed(lambda: raw_pages(chart_paths), 5)
    chart_ours_s = timed(lambda: [t for p in chart_paths for t in chunk_texts(p, settings, counter)], 5)

    # Scanned pages are skipped, not OCRed, on both sides: raw get_text reads nothing from them either.
    dossier = None if ctx.smoke else dossier_row(ctx, work, counter)  # dossier-bench comes with the bench extra

    embedder = OnnxEmbedder(settings.embedder)
    embedder.embed_sync(texts[:32])
    t0 = time.perf_counter()
    embedder.embed_sync(texts)
    embed_s = time.perf_counter() - t0
    del embedder

    start_worker(ctx, env, work / "worker.log")
    t0 = time.perf_counter()
    await index_pdfs(env, paths)
    e2e_s = time.perf_counter() - t0
    return [
        Row(bench="ingest", measure=f"parse+chunk, prose: {docs} PDFs x {pages} pages (ingest code) vs {RAW}, "
            "the target baseline for prose", ours=f"{total / ours_s:,.0f} pages/s ({len(texts)} chunks)",
            baseline=f"{total / raw_s:,.0f} pages/s", ratio=ratio(total / ours_s, total / raw_s)),
        Row(bench="ingest", measure=f"parse+chunk, table-heavy: {docs} PDFs x {pages} pages, each a ruled table "
            f"between paragraphs (ingest code) vs {PLAIN_TABLES}, the target baseline for pages with tables",
            ours=f"{total / table_ours_s:,.0f} pages/s ({len(table_chunks)} chunks)",
            baseline=f"{total / table_plain_s:,.1f} pages/s (raw get_text alone, which reads no table: "
                     f"{total / table_raw_s:,.0f} pages/s)",
            ratio=ratio(total / table_ours_s, total / table_plain_s)),
        Row(bench="ingest", measure=f"parse+chunk, chart-heavy: {chart_pages} pages, each a scatter plot of 2,000 "
            f"marks (its own path each) between paragraphs, no table (ingest code) vs {RAW}",
            ours=f"{chart_pages / chart_ours_s:,.0f} pages/s", baseline=f"{chart_pages / chart_raw_s:,.0f} pages/s",
            ratio=ratio(chart_pages / chart_ours_s, chart_pages / chart_raw_s)),
        *([dossier] if dossier else []),
        Row(bench="ingest", measure="end to end: Producer.run -> worker embeds and indexes every chunk, vs raw "
            "get_text + embed_sync in one process", ours=f"{total / e2e_s:,.1f} pages/s",
            baseline=f"{total / (raw_s + embed_s):,.1f} pages/s", ratio=ratio(total / e2e_s, total / (raw_s + embed_s))),
    ]
