"""Reading PDFs with PyMuPDF: one page at a time, as text blocks in reading order, never the whole document.

A page becomes a list of blocks: paragraphs (MuPDF joins hyphenated line breaks) and
ruled tables (as markdown, see :mod:`ingest.tables`), put in reading order by
:mod:`ingest.layout`, which also drops the headers and footers that repeat across pages.
A page without a text layer is OCRed with Tesseract when it is installed, and is
otherwise reported as skipped: never silently empty.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pymupdf
import structlog
from msgspec import Struct

from ingest import pdflib, tables
from ingest.errors import BrokenPdf, EmptyPdf, EncryptedPdf, NotAPdf, TooLarge
from ingest.layout import MARGIN, Block, Page, reading_order
from ingest.structure import OutlineEntry

log = structlog.get_logger("ingest.pdf")

# "blocks" flags without images, plus MuPDF's own joining of hyphenated line breaks, and
# vector graphics as blocks of type 3: ruled tables are read from them (ingest.tables), at no
# extra cost (a separate get_cdrawings() pass took half as long as the text itself).
# MuPDF's per-character clipping to the mediabox (TEXT_MEDIABOX_CLIP) costs a tenth of the
# extraction: blocks wholly off the page are dropped here instead.
TEXT_FLAGS = ((pymupdf.TEXTFLAGS_BLOCKS & ~pymupdf.TEXT_PRESERVE_IMAGES & ~pymupdf.TEXT_MEDIABOX_CLIP)
              | pymupdf.TEXT_DEHYPHENATE | getattr(pymupdf, "TEXT_COLLECT_VECTORS", 0))
_TEXT, _VECTOR = 0, 3
#: Older PyMuPDF has no vector blocks: line art is then found with get_cdrawings() (slower).
_VECTOR_BLOCKS = bool(getattr(pymupdf, "TEXT_COLLECT_VECTORS", 0))
#: A page with fewer characters than this (a page number, a stamp) but an image covering
#: most of it is a scan.
SCAN_MAX_CHARS = 64
#: Pixels a page is rendered to for OCR at most: Tesseract and the image take about 17 bytes a pixel,
#: so this keeps `python -m ingest` within its 300 MB (a letter page at 200 dpi is 3.7 million; a
#: poster-sized scan is OCRed at a lower dpi instead of taking gigabytes).
OCR_MAX_PIXELS = 6_000_000
#: Line-art paths a page needs before it is worth looking for ruled tables.
TABLE_MIN_PATHS = 4


def document_id(path: Path) -> str:
    """The content hash: the same bytes are the same document wherever they live."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


@functools.lru_cache(maxsize=8)
def tessdata(language: str) -> str | None:
    """Tesseract's language folder when Tesseract and every language in ``language`` are installed."""
    try:
        folder = str(pymupdf.get_tessdata())
    except (RuntimeError, OSError):
        return None
    if not folder or not all(os.path.isfile(os.path.join(folder, f"{lang}.traineddata"))
                             for lang in language.split("+")):
        return None
    return folder


class OcrOptions(Struct, frozen=True):
    language: str = "eng"
    dpi: int = 200


class PdfReader:
    """An open PDF; raises a coded IngestError for files that cannot be read."""

    def __init__(self, path: Path, *, max_bytes: int, name: str | None = None) -> None:
        self.path = path
        self.name = name or path.name
        size = path.stat().st_size
        if size > max_bytes:
            raise TooLarge(f"{self.name} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit")
        with path.open("rb") as fh:
            head = fh.read(1024)
        if b"%PDF-" not in head:
            raise NotAPdf(f"{self.name} is not a PDF (no %PDF- header)")
        with path.open("rb") as fh:
            fh.seek(max(0, size - 2048))
            tail = fh.read()
        if b"%%EOF" not in tail:
            # MuPDF would "repair" it and quietly read what is left: a truncated file is broken input.
            raise BrokenPdf(f"{self.name} is truncated (no %%EOF marker at its end)")
        try:
            self._doc = pymupdf.open(path, filetype="pdf")
        except (pymupdf.FileDataError, RuntimeError, ValueError) as exc:
            raise BrokenPdf(f"{self.name} cannot be parsed: {exc}") from None
        if self._doc.needs_pass:
            self._doc.close()
            raise EncryptedPdf(f"{self.name} is encrypted and needs a password")
        if self._doc.page_count == 0:
            self._doc.close()
            raise EmptyPdf(f"{self.name} has no pages")
        if self._doc.is_repaired:
            # MuPDF rebuilt a damaged cross-reference table; pages may still fail below.
            log.info("pdf_repaired", file=self.name)

    @property
    def pages(self) -> int:
        return int(self._doc.page_count)

    @functools.cached_property
    def title(self) -> str:
        """The metadata's title, else the largest text of the first page ("Writing R Extensions"), else the
        file's name."""
        meta = self._doc.metadata or {}
        return (meta.get("title") or "").strip() or self._cover_title() or Path(self.name).stem

    def _cover_title(self) -> str:
        try:
            blocks = self._doc.load_page(0).get_text("dict", flags=pymupdf.TEXTFLAGS_TEXT)["blocks"]
        except (RuntimeError, ValueError, IndexError):
            return ""
        lines = [(max(s["size"] for s in line["spans"]), "".join(s["text"] for s in line["spans"]).strip())
                 for b in blocks for line in b.get("lines", []) if line["spans"]]
        lines = [(size, text) for size, text in lines if any(c.isalpha() for c in text)]
        if not lines:
            return ""
        largest = max(size for size, _ in lines)
        title_lines = [text for size, text in lines if size >= largest - 0.5]
        # A title stands out: set larger than most of the page, in a line or three.
        if largest < 1.2 * statistics.median(size for size, _ in lines) or len(title_lines) > 3:
            return ""
        title = " ".join(" ".join(title_lines).split())
        return title[:200] if len(title) >= 3 else ""

    def outline(self) -> list[OutlineEntry]:
        """Every outline entry that points at a page, in the outline's order."""
        try:
            toc = self._doc.get_toc(simple=True)
        except (RuntimeError, ValueError):
            return []
        return [OutlineEntry(int(page), int(level), " ".join(str(title).split()))
                for level, title, page in toc if page >= 1 and str(title).strip()]

    def read(self, ocr: OcrOptions | None = None) -> Iterator[Page]:
        """Every page in order, its blocks in reading order; a page that fails to parse is broken input."""
        folder = tessdata(ocr.language) if ocr is not None else None
        for number in range(self._doc.page_count):
            try:
                page = self._doc.load_page(number)
                yield self._read_page(page, number + 1, ocr, folder)
            except (RuntimeError, ValueError) as exc:
                raise BrokenPdf(f"{self.name}, page {number + 1}: {exc}") from None
            if number % 256 == 255:
                # MuPDF keeps parsed objects in its store; a long document would otherwise grow it to its cap.
                pymupdf.TOOLS.store_shrink(100)

    def _read_page(self, page: pymupdf.Page, number: int, ocr: OcrOptions | None, folder: str | None) -> Page:
        textpage = page.get_textpage(flags=TEXT_FLAGS)
        raw = pdflib.blocks(textpage)
        # Text and line art come in the unrotated page's coordinates: clip against that page, then
        # turn them upright, before reading order, margins and table rows are judged.
        turn = page.rotation_matrix if page.rotation % 360 else None
        x0, y0, x1, y1 = page.rect * page.derotation_matrix if turn is not None else page.rect
        blocks = [Block(b[0], b[1], b[2], b[3], _join_hyphens(b[4]) if "-\n" in b[4] else b[4])
                  for b in raw if b[6] == _TEXT and b[2] > x0 and b[0] < x1 and b[3] > y0 and b[1] < y1
                  and b[4].strip()]
        if turn is not None:
            blocks = _upright(blocks, turn)
            x0, y0, x1, y1 = page.rect
        height = y1 - y0
        if len(blocks) < 4 and sum(len(b.text) for b in blocks) < SCAN_MAX_CHARS and _is_scan(page):
            if ocr is None or folder is None:
                return Page(number, height, blocks, skipped=True)
            try:
                blocks = _ocr_blocks(page, ocr, folder)
            except (RuntimeError, ValueError, OSError) as exc:  # Tesseract failed on this page: skip it, loudly
                log.warning("ocr_failed", file=self.name, page=number, error=str(exc))
                return Page(number, height, blocks, skipped=True)
            return Page(number, height, reading_order(blocks), ocr=True)
        # Ruled tables are drawn as lines and rectangles: a page with (almost) none has none.
        vectors = ([b for b in raw if b[6] == _VECTOR] if _VECTOR_BLOCKS
                   else [tuple(path["rect"]) for path in page.get_cdrawings()])
        if turn is not None:
            vectors = [(*tables.turned(v[:4], turn), *v[4:]) for v in vectors]
        if len(vectors) >= TABLE_MIN_PATHS and tables.grid_like(vectors, y0 + height * MARGIN, y1 - height * MARGIN):
            blocks = _with_tables(page, blocks, vectors, textpage, turn)
        return Page(number, height, reading_order(blocks))

    def close(self) -> None:
        self._doc.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_HYPHEN_BREAK = re.compile(r"(\w)-\n(?=[a-z])")


def _join_hyphens(text: str) -> str:
    """``electri-\ncity`` -> ``electricity``: what MuPDF's own dehyphenation leaves (lines of separate text objects)."""
    return _HYPHEN_BREAK.sub(r"\1", text)


def ocr_dpi(page: pymupdf.Page, dpi: int) -> int:
    """``dpi``, lowered where the page is so large that its image would pass OCR_MAX_PIXELS (a poster)."""
    area = abs(page.rect) or 1.0
    if area * (dpi / 72) ** 2 <= OCR_MAX_PIXELS:
        return dpi
    return max(1, int(72 * math.sqrt(OCR_MAX_PIXELS / area)))


def _ocr_blocks(page: pymupdf.Page, ocr: OcrOptions, folder: str) -> list[Block]:
    """The page's text blocks read by Tesseract, in the coordinates of the page as shown."""
    dpi = ocr_dpi(page, ocr.dpi)
    if dpi != ocr.dpi:
        log.info("ocr_dpi_lowered", page=page.number + 1, dpi=dpi, asked=ocr.dpi, max_pixels=OCR_MAX_PIXELS)
    if page.rotation % 360 == 0:
        textpage = page.get_textpage_ocr(flags=TEXT_FLAGS, language=ocr.language, dpi=dpi, full=True,
                                         tessdata=folder)
        raw = page.get_text("blocks", flags=TEXT_FLAGS | pymupdf.TEXT_MEDIABOX_CLIP, textpage=textpage)
    else:
        # MuPDF's OCR text page loses lines of a page with a /Rotate (seen at 270): the page is OCRed as
        # shown instead, into a one-page PDF of the same size whose text is where it is on the page.
        pixmap = page.get_pixmap(dpi=dpi)
        with pymupdf.open("pdf", pixmap.pdfocr_tobytes(language=ocr.language, tessdata=folder)) as scan:
            raw = scan[0].get_text("blocks", flags=TEXT_FLAGS | pymupdf.TEXT_MEDIABOX_CLIP)
    return [Block(b[0], b[1], b[2], b[3], b[4]) for b in raw if b[6] == _TEXT and b[4].strip()]


def _is_scan(page: pymupdf.Page) -> bool:
    """Images cover at least half the page: a scan (a blank page is just empty)."""
    area = abs(page.rect) or 1.0
    covered = sum(abs(pymupdf.Rect(info["bbox"]) & page.rect) for info in page.get_image_info())
    return bool(covered / area >= 0.5)


def _upright(blocks: list[Block], matrix: pymupdf.Matrix) -> list[Block]:
    """Blocks in the coordinates of the page as displayed (its /Rotate applied)."""
    return [Block(*tables.turned(block[:4], matrix), block.text, block.table) for block in blocks]


def _with_tables(page: pymupdf.Page, blocks: list[Block], vectors: list[tuple],  # type: ignore[type-arg]
                 textpage: pymupdf.TextPage, turn: pymupdf.Matrix | None) -> list[Block]:
    """Replace the text blocks inside each ruled table by the table as one markdown block.

    ``turn``: the page's rotation matrix, when blocks and vectors were turned upright with it.
    """
    found = tables.find(page, vectors, textpage, vector_blocks=_VECTOR_BLOCKS, turn=turn)
    if not found:
        return blocks
    out = [block for block in blocks
           if not any(x0 <= (block.x0 + block.x1) / 2 < x1 and y0 <= (block.y0 + block.y1) / 2 < y1
                      for (x0, y0, x1, y1), _ in found)]
    out += [Block(*bbox, markdown, table=True) for bbox, markdown in found]
    return out
