"""From an open PDF to chunks, page by page: blocks in reading order, repeats dropped, sections, chunks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from msgspec import Struct

from ingest.chunker import PARAGRAPH, Chunk, Chunker, TokenCounter, Unit
from ingest.layout import drop_repeats
from ingest.pdf import OcrOptions, PdfReader
from ingest.structure import Section, Sections

if TYPE_CHECKING:
    from core.settings import IngestSettings


class ParseStats(Struct, kw_only=True):
    """What parsing a document found so far; filled in while its chunks are consumed."""

    pages: int = 0
    ocr_pages: list[int] = []
    #: Pages with no text layer that were not OCRed (Tesseract missing): told to the user.
    skipped_pages: list[int] = []
    #: Pages of tables of contents, indexes and lists of figures, left out of the index.
    nav_pages: list[int] = []


def chunker(settings: IngestSettings, counter: TokenCounter | None) -> Chunker:
    return Chunker(size_words=settings.chunk_words, overlap_words=settings.overlap_words,
                   size_tokens=settings.chunk_tokens, overlap_tokens=settings.overlap_tokens, counter=counter)


def parse(reader: PdfReader, settings: IngestSettings, counter: TokenCounter | None,
          stats: ParseStats | None = None) -> Iterator[Chunk]:
    """The document's chunks, lazily: only a few pages and one chunk window are held at a time.

    Tables of contents, indexes and lists of figures are left out (RAG_INGEST_NAV_PAGES=skip),
    unless they are all the document has: then it is read again, keeping them.
    """
    stats = stats if stats is not None else ParseStats()
    skip = settings.nav_pages == "skip"
    produced = False
    for chunk in _parse(reader, settings, counter, stats, skip_nav=skip):
        produced = True
        yield chunk
    if skip and not produced and stats.nav_pages:
        stats.pages, stats.ocr_pages, stats.skipped_pages, stats.nav_pages = 0, [], [], []
        yield from _parse(reader, settings, counter, stats, skip_nav=False)


def _parse(reader: PdfReader, settings: IngestSettings, counter: TokenCounter | None, stats: ParseStats, *,
           skip_nav: bool) -> Iterator[Chunk]:
    ocr = OcrOptions(settings.ocr_language, settings.ocr_dpi) if settings.ocr else None
    sections = Sections(reader.title, reader.outline())

    def units() -> Iterator[Unit]:
        for page in drop_repeats(reader.read(ocr)):
            stats.pages += 1
            if page.skipped:
                stats.skipped_pages.append(page.number)
            elif page.ocr:
                stats.ocr_pages.append(page.number)
            # Consecutive paragraphs of one section go as one unit: fewer, larger steps for the chunker.
            run: list[str] = []
            run_section: Section | None = None
            nav_page = False
            for block, section in zip(page.blocks, sections.of_page(page)):
                if skip_nav and section.nav:
                    nav_page = True
                    continue
                if run and run_section is not None and (block.table or section is not run_section):
                    yield _unit(PARAGRAPH.join(run), page.number, run_section)
                    run = []
                if block.table:
                    yield _unit(block.text, page.number, section, table=True)
                else:
                    run.append(block.text)
                    run_section = section
            if run and run_section is not None:
                yield _unit(PARAGRAPH.join(run), page.number, run_section)
            if nav_page:
                stats.nav_pages.append(page.number)

    return chunker(settings, counter).chunks(units())


def _unit(text: str, page: int, section: Section, *, table: bool = False) -> Unit:
    return Unit(text, page, section.title, table=table, seq=section.seq, context=section.context, nav=section.nav)
