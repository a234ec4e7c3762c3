"""A document's structure: its sections (from the outline, else from headings) and its pages that are not content.

Every block of a page gets the :class:`Section` it belongs to. A section starts at the block
that begins with its title (the PDF's outline entry, matched to the page's text), or at a
heading detected by its size or its numbering where the PDF has no outline; the chunker
starts a new chunk at every section, and indexes each chunk with a contextual header: the
document's title and the section's path. Tables of contents, indexes and lists of figures
(by their outline entry, or by their lines: mostly page references) are marked ``nav``.
"""

from __future__ import annotations

import re
import statistics
from bisect import bisect_right
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from core.text import normalize

if TYPE_CHECKING:
    from ingest.layout import Block, Page

#: Separates the levels of a section path in the contextual header.
PATH_SEP = " > "
#: Characters of the contextual header at most (its title, then the deepest levels that fit): about
#: 40 of the embedder's tokens, so the chunk's own text keeps most of the 256-token window.
HEADER_CHARS = 160

_NAV_TITLE = re.compile(
    r"^(?:(?:table of )?contents|(?:[\w-]+ ){0,4}(?:index|indices|indexes)(?: of [\w ]+)?"
    r"|list of (?:figures|tables|listings|examples|illustrations))$", re.IGNORECASE)
#: Dot leaders, as tables of contents draw them between a title and its page.
_LEADERS = (". . .", "....")
# Each pattern counts the lines of a whole page at once (a pass per page, not a call per line).
#: The end of an index line: a term's page references ("rev, 514, 1584").
_INDEX_REFS = re.compile(r",[ \t]*\d{1,5}(?:[ \t]*[-\u2013][ \t]*\d{1,5})?[ \t]*$", re.MULTILINE)
#: A line that is only a page number (arabic or roman) or a section's: a table of contents split across lines.
_NUMBER = re.compile(r"^[ \t]*(?:\d{1,5}(?:\.\d{1,3})*|[ivxlcdm]{1,7})[ \t]*$", re.MULTILINE | re.IGNORECASE)
#: Share of a page's lines that are page references from which it is a table of contents or an index.
NAV_SHARE = 0.5
#: Lines a page needs before it can be told a table of contents or an index.
NAV_MIN_LINES = 8
_HEADING_NUMBER = re.compile(r"^(?:\d+(?:\.\d+)*|[A-Z](?:\.\d+)+)\.?\s+\S")
#: A detected heading is this much taller per line than the body text.
HEADING_RATIO = 1.2


def header(title: str, path: Sequence[str]) -> str:
    """The contextual header: ``title > level 1 > ... > deepest``, dropping upper levels to stay short."""
    parts = [p for p in path if p]
    while parts and len(title) + sum(len(p) + len(PATH_SEP) for p in parts) > HEADER_CHARS:
        parts.pop(0) if len(parts) > 1 else parts.clear()
    text = PATH_SEP.join([title, *parts]) if title else PATH_SEP.join(parts)
    return text[:HEADER_CHARS]


def nav_title(title: str | None) -> bool:
    return bool(title) and bool(_NAV_TITLE.match(normalize(title or "")))


def nav_page(blocks: Sequence[Block]) -> bool:
    """Most of the page's lines are page references: a table of contents (dot leaders, page numbers)
    or an index (terms and their pages). A page of numbers alone (a program's output) is neither."""
    text = "".join(b.text if b.text.endswith("\n") else b.text + "\n" for b in blocks if not b.table)
    lines = text.count("\n")
    if lines < NAV_MIN_LINES:
        return False
    leaders = 0
    if any(leader in text for leader in _LEADERS):  # str.find, not a pattern: prose pages cost next to nothing
        leaders = sum(1 for line in text.split("\n") if any(leader in line for leader in _LEADERS))
    refs = leaders + len(_INDEX_REFS.findall(text))
    if leaders >= 3:
        refs += len(_NUMBER.findall(text))
    return refs >= NAV_SHARE * lines


class Section(NamedTuple):
    #: Position among the document's sections: a new value starts a new chunk.
    seq: int
    title: str | None
    #: The contextual header indexed with every chunk of the section.
    context: str
    nav: bool = False


class OutlineEntry(NamedTuple):
    page: int  # 1-based
    level: int
    title: str


def _starts_with_title(text: str, title: str) -> bool:
    """The block begins with the title: on its first line, or its first two (a wrapped title)."""
    lines = text.split("\n", 2)
    first = normalize(lines[0])
    if first == title:
        return True
    return len(lines) > 1 and title.startswith(first) and normalize(lines[0] + " " + lines[1]) == title


class Sections:
    """The section of every block, page by page (pages are visited in order)."""

    def __init__(self, title: str, outline: list[OutlineEntry]) -> None:
        self._title = title
        self._outline = sorted(outline, key=lambda e: e.page)  # stable: the outline's order within a page
        self._pages = [e.page for e in self._outline]
        self._titles = [normalize(e.title) for e in self._outline]
        self._headings = None if outline else Headings()
        self._path: list[str] = []
        self._next = 0  # the first outline entry not yet started
        self.current = Section(0, None, header(title, []))

    def _start(self, title: str | None, level: int, *, nav: bool | None = None) -> Section:
        del self._path[max(level - 1, 0):]
        if title:
            self._path.append(title)
        # A top-level "Contents", "Index", "List of figures": everything under it is not content.
        is_nav = bool(self._path) and nav_title(self._path[0]) if nav is None else nav
        self.current = Section(self.current.seq + 1, title, header(self._title, self._path), is_nav)
        return self.current

    def of_page(self, page: Page) -> list[Section]:
        blocks = page.blocks
        starts = self._outline_starts(page) if self._headings is None else self._headings.of_page(page)
        out: list[Section] = []
        k = 0
        page_nav = nav_page(blocks)
        if page_nav != self.current.nav and (not starts or starts[0][0] > 0):
            # A table of contents or an index begins (or ends) with the page: a section of its own. Under a
            # "Contents" or "Index" entry every page is one, but for the page where the next section starts.
            under_nav_title = bool(self._path) and nav_title(self._path[0]) and not starts
            self._start(self.current.title, len(self._path), nav=page_nav or under_nav_title)
        for i in range(len(blocks)):
            while k < len(starts) and starts[k][0] <= i:
                _, level, title = starts[k]
                section = self._start(title, level)
                if page_nav and not section.nav:
                    self._start(title, level, nav=True)
                k += 1
            out.append(self.current)
        while k < len(starts):  # entries past the page's last block (an empty page)
            _, level, title = starts[k]
            self._start(title, level)
            k += 1
        return out

    def _outline_starts(self, page: Page) -> list[tuple[int, int, str]]:
        """(block position, level, title) of the outline entries that start on this page."""
        end = bisect_right(self._pages, page.number)
        starts: list[tuple[int, int, str]] = []
        pos = 0
        for j in range(self._next, end):
            entry = self._outline[j]
            if entry.page < page.number:  # pages before the first one visited, or without text
                starts.append((0, entry.level, entry.title))
                continue
            title = self._titles[j]
            for b in range(pos, len(page.blocks)):
                if _starts_with_title(page.blocks[b].text, title):
                    pos = b
                    break
            # Not found: at the top of its page, or after the entry before it on this page.
            starts.append((pos, entry.level, entry.title))
        self._next = end
        return starts


class Headings:
    """Headings of a document without an outline: short lines set larger than the body text, or
    numbered ("2.3 Results"). Levels: a larger size is a higher level; a number's depth is its level.

    The body's line height is the running median of the lines of multi-line blocks seen so far.
    """

    def __init__(self) -> None:
        self._body: list[float] = []
        self._sizes: list[float] = []  # distinct heading line heights seen, largest first

    def of_page(self, page: Page) -> list[tuple[int, int, str]]:
        heights = []
        for b in page.blocks:
            lines = b.text.count("\n") or 1
            if lines > 2 and not b.table:
                heights.append((b.y1 - b.y0) / lines)
        self._body += heights
        if len(self._body) > 2048:
            del self._body[:1024]
        if not self._body:
            return []
        body = statistics.median(self._body)
        top, bottom = page.height * 0.06, page.height * 0.94
        starts: list[tuple[int, int, str]] = []
        for i, b in enumerate(page.blocks):
            text = b.text.strip()
            if b.table or not text or len(text) > 120 or b.y1 <= top or b.y0 >= bottom:
                continue
            lines = text.count("\n") + 1
            if lines > 2 or text[-1] in ".,;:" or not any(c.isalpha() for c in text):
                continue
            height = (b.y1 - b.y0) / lines
            title = " ".join(text.split())
            if height >= HEADING_RATIO * body:
                starts.append((i, self._level(height), title))
            elif lines == 1 and _HEADING_NUMBER.match(title) and len(title) <= 80:
                number = title.split()[0].rstrip(".")
                starts.append((i, len(self._sizes) + number.count(".") + 1, title))
        return starts

    def _level(self, height: float) -> int:
        for level, size in enumerate(self._sizes, start=1):
            if abs(size - height) <= 0.08 * size:
                return level
        self._sizes.append(height)
        self._sizes.sort(reverse=True)
        return self._sizes.index(height) + 1
