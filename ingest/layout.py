"""Layout heuristics over a page's blocks: reading order (bands and columns), and the headers and footers
that repeat across pages (dropped). Pure geometry and text: :mod:`ingest.pdf` reads the blocks.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from msgspec import Struct

#: Fraction of the page height at the top and at the bottom where headers and footers live.
MARGIN = 0.08
#: Pages looked at on each side of a page to decide that a margin line repeats.
REPEAT_WINDOW = 4
#: A margin line seen on this many other pages of the window is a header or footer.
REPEAT_MIN = 2


class Block(NamedTuple):
    x0: float
    y0: float
    x1: float
    y1: float
    text: str
    table: bool = False


class Page(Struct):
    number: int  # 1-based
    height: float
    blocks: list[Block]
    ocr: bool = False
    #: No text layer and no OCR available: reported to the user.
    skipped: bool = False


def reading_order(blocks: list[Block]) -> list[Block]:
    """Blocks as a person reads them: full-width blocks split the page into bands; within a
    band, narrow blocks group into columns (overlapping x ranges), read left to right,
    each top to bottom."""
    if len(blocks) < 2:
        return blocks
    left = min(b.x0 for b in blocks)
    width = max(b.x1 for b in blocks) - left or 1.0
    ordered: list[Block] = []
    band: list[Block] = []
    for block in sorted(blocks, key=lambda b: (b.y0, b.x0)):
        if block.x1 - block.x0 > 0.55 * width:
            ordered += _columns(band)
            band = []
            ordered.append(block)
        else:
            band.append(block)
    ordered += _columns(band)
    return ordered


def _columns(band: list[Block]) -> list[Block]:
    if len(band) < 2:
        return band
    columns: list[list[Block]] = []
    right = -1.0
    for block in sorted(band, key=lambda b: b.x0):
        # A small tolerance: ragged or indented lines of one column still overlap.
        if columns and block.x0 < right - 2:
            columns[-1].append(block)
            right = max(right, block.x1)
        else:
            columns.append([block])
            right = block.x1
    return [b for column in columns for b in sorted(column, key=lambda b: (b.y0, b.x0))]


_DIGITS = re.compile(r"\d+")


def _margin_key(block: Block) -> str:
    # "Page 3 of 40" and "Page 4 of 40" are the same footer.
    return _DIGITS.sub("#", " ".join(block.text.split()).lower())


def _margin_keys(page: Page) -> dict[int, str]:
    """Block position -> key, for the blocks in the page's top and bottom margins."""
    top, bottom = page.height * MARGIN, page.height * (1 - MARGIN)
    return {i: _margin_key(b) for i, b in enumerate(page.blocks)
            if (b.y1 <= top or b.y0 >= bottom) and not b.table}


def drop_repeats(pages: Iterable[Page], window: int = REPEAT_WINDOW) -> Iterator[Page]:
    """Drop header and footer blocks: margin lines that repeat on other pages nearby.

    Looks ``window`` pages ahead and behind, so only ``window + 1`` pages are held at once.
    """
    ahead: deque[tuple[Page, dict[int, str]]] = deque()
    behind: deque[set[str]] = deque(maxlen=window)

    def emit() -> Page:
        page, keys = ahead.popleft()
        if keys:
            others = [*behind, *(set(k.values()) for _, k in ahead)]
            drop = {i for i, key in keys.items() if sum(key in other for other in others) >= REPEAT_MIN}
            if drop:
                page.blocks = [b for i, b in enumerate(page.blocks) if i not in drop]
        behind.append(set(keys.values()))
        return page

    for page in pages:
        ahead.append((page, _margin_keys(page)))
        if len(ahead) > window:
            yield emit()
    while ahead:
        yield emit()
