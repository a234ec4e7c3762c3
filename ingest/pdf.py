"""Reading PDFs with PyMuPDF: one page's text at a time, never the whole document."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pymupdf

from ingest.errors import BrokenPdf, EmptyPdf, EncryptedPdf, NotAPdf, TooLarge


def document_id(path: Path) -> str:
    """The content hash: the same bytes are the same document wherever they live."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


class PdfReader:
    """An open PDF; raises a coded IngestError for files that cannot be read."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        size = path.stat().st_size
        if size > max_bytes:
            raise TooLarge(f"{path.name} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit")
        with path.open("rb") as fh:
            head = fh.read(1024)
        if b"%PDF-" not in head:
            raise NotAPdf(f"{path.name} is not a PDF (no %PDF- header)")
        try:
            self._doc = pymupdf.open(path, filetype="pdf")
        except (pymupdf.FileDataError, RuntimeError, ValueError) as exc:
            raise BrokenPdf(f"{path.name} cannot be parsed: {exc}") from None
        if self._doc.needs_pass:
            self._doc.close()
            raise EncryptedPdf(f"{path.name} is encrypted and needs a password")
        if self._doc.page_count == 0:
            self._doc.close()
            raise EmptyPdf(f"{path.name} has no pages")

    @property
    def pages(self) -> int:
        return int(self._doc.page_count)

    @property
    def title(self) -> str:
        meta = self._doc.metadata or {}
        return (meta.get("title") or "").strip() or self.path.stem

    def page_texts(self) -> Iterator[tuple[int, str]]:
        """(1-based page number, text) in order; a page that fails to parse is broken input."""
        for number in range(self._doc.page_count):
            try:
                text = self._doc.load_page(number).get_text("text", sort=True)
            except (RuntimeError, ValueError) as exc:
                raise BrokenPdf(f"{self.path.name}, page {number + 1}: {exc}") from None
            yield number + 1, text

    def close(self) -> None:
        self._doc.close()

    def __enter__(self) -> PdfReader:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
