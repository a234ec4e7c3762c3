"""Overlapping word windows over a document's pages; each chunk keeps its page span."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from msgspec import Struct


class Chunk(Struct, frozen=True):
    text: str
    page: int
    page_end: int
    index: int


def chunk_pages(pages: Iterable[tuple[int, str]], *, size: int, overlap: int) -> Iterator[Chunk]:
    """Windows of ``size`` words, each starting ``size - overlap`` words after the last.

    Words are never split; only a window's worth of words is held at a time.
    """
    if overlap >= size:
        raise ValueError(f"overlap ({overlap}) must be smaller than the chunk size ({size})")
    step = size - overlap
    words: list[str] = []
    word_pages: list[int] = []
    index = 0
    for page, text in pages:
        for word in text.split():
            words.append(word)
            word_pages.append(page)
            if len(words) == size:
                yield Chunk(" ".join(words), word_pages[0], word_pages[-1], index)
                index += 1
                del words[:step], word_pages[:step]
    # The tail: emit what the last full window did not already cover.
    if words and (index == 0 or len(words) > overlap):
        yield Chunk(" ".join(words), word_pages[0], word_pages[-1], index)
