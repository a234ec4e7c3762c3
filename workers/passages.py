"""The context an answer is built from: the sentences of the retrieved chunks most related to the question.

Every sentence of a question's sources is scored by the embedder (cosine to the question, all
the micro-batch's sentences in one call; the vectors of the most recently used sentences are kept,
so that a sentence met again costs nothing) and by BM25 terms (the share of the question's terms
it holds, each weighted by its IDF among those sentences); the best go into the prompt, in their
document order, within a token budget, each source's sentences under its ``[n]`` with file and
page. The same scores say when nothing retrieved answers the question (``Context.found``), and
give the extractive answer its sentences.

Sentences that speak to an AI (instructions planted in a document) never go into the context:
the service answers from documents, it does not take orders from them.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from typing import TYPE_CHECKING, Final

import numpy as np
from msgspec import Struct

if TYPE_CHECKING:
    from core.protocol import Source
    from workers.embedder import Embedder
    from workers.sparse import Bm25Encoder

#: Sentence ends: ., ! or ? (then a closing quote or bracket) before whitespace and a capital, digit or
#: bracket; a regex is enough for the page text of manuals and letters (a splitter library would pull in
#: language models for this one function). Abbreviations such as "e.g." and "No." do not end one.
_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9£€$])")
_ABBREV = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|cf|No|Nos|Fig|Sec|Art|Mr|Mrs|Ms|Dr|St|approx|incl)\.|\b[A-Z]\.)$")
#: A line that is only a heading, a list bullet or a table row also ends a sentence.
_BREAK = re.compile(r"\n\s*\n|\n(?=\s*(?:[-•*]|\d+[.)])\s)")
#: Sentences addressed to an AI model rather than to a reader: planted instructions.
INSTRUCTION: Final = re.compile(
    r"\b(ignore|disregard|forget)\b.{0,40}\b(instructions?|prompts?|documents?|sources?|context|above|rules)\b"
    r"|\b(you are|act as)\b.{0,30}\b(assistant|ai|model|chatbot|language model)\b"
    r"|\b(reply|respond|answer|output|say)\b.{0,20}\b(only|just|exactly)\b.{0,30}\b(word|with|\")"
    r"|\b(system prompt|assistant:|ai (model|assistant)s?)\b", re.IGNORECASE)
#: Weight of the dense score against the BM25 one (the rest); chosen on dossier-bench's QA questions.
DENSE_SHARE: Final = 0.6
#: Tokens per word of English text (the LLM's tokenizer, not ours: a budget, not a count).
TOKENS_PER_WORD: Final = 1.4


class Scored(Struct, frozen=True):
    source: Source
    position: int  # the sentence's place in its chunk
    text: str
    score: float


class Context(Struct, frozen=True):
    """What an answer is built from: the chosen sentences, best first, and whether any answers at all."""

    sentences: list[Scored]
    found: bool
    best: float = 0.0

    def passages(self) -> list[tuple[Source, str]]:
        """Each source once (by its number) with its chosen sentences in their document order."""
        by_source: dict[int, list[Scored]] = {}
        for s in self.sentences:
            by_source.setdefault(s.source.n, []).append(s)
        out = []
        for n in sorted(by_source):
            picked = sorted(by_source[n], key=lambda s: s.position)
            text = ""
            for prev, s in zip([None, *picked], picked):
                text += s.text if prev is None else (" " if s.position == prev.position + 1 else " … ") + s.text
            out.append((picked[0].source, text))
        return out


def sentences(text: str) -> list[str]:
    """The sentences of a chunk's text, whitespace collapsed."""
    out: list[str] = []
    for block in _BREAK.split(text):
        pending = ""
        for piece in _END.split(block):
            pending = f"{pending} {piece}" if pending else piece
            if not _ABBREV.search(pending.rstrip()):
                out.append(" ".join(pending.split()))
                pending = ""
        if pending:
            out.append(" ".join(pending.split()))
    return [s for s in out if len(s) > 1]


def tokens(text: str) -> int:
    return math.ceil(len(text.split()) * TOKENS_PER_WORD)


class PassageSelector:
    def __init__(self, embedder: Embedder, bm25: Bm25Encoder, *, budget_tokens: int, min_score: float,
                 max_sentence_tokens: int = 90, cache_size: int = 0) -> None:
        self._embedder = embedder
        self._bm25 = bm25
        self._budget = budget_tokens
        self._min_score = min_score
        self._max_sentence = max_sentence_tokens
        self._cache = _Lru(cache_size)

    async def select(self, questions: list[str], vectors: list[np.ndarray | None],
                     sources: list[list[Source]]) -> list[Context]:
        """Each question's context; the sentences of the whole micro-batch are embedded in one call."""
        pools: list[list[tuple[Source, int, str]]] = []
        for found in sources:
            pool = []
            for source in found:
                for position, text in enumerate(sentences(source.snippet)):
                    if not INSTRUCTION.search(text):
                        pool.append((source, position, _clip(text, self._max_sentence)))
            pools.append(pool)
        missing = [i for i, v in enumerate(vectors) if v is None and pools[i]]
        # Each distinct text embedded once: overlapping chunks and questions on one page repeat sentences.
        row_of: dict[str, int] = {}
        for text in [questions[i] for i in missing] + [t for pool in pools for _, _, t in pool]:
            row_of.setdefault(text, len(row_of))
        rows = await self._vectors(list(row_of))
        out = []
        for i, pool in enumerate(pools):
            dense = rows[[row_of[t] for _, _, t in pool]] if pool else rows[:0]
            q = vectors[i] if vectors[i] is not None else (rows[row_of[questions[i]]] if pool else None)
            out.append(self._choose(questions[i], q, pool, dense))
        return out

    async def _vectors(self, texts: list[str]) -> np.ndarray:
        """One row per text: kept ones from the cache, the rest embedded in one call (then kept)."""
        if not texts:
            return np.empty((0, 0), np.float32)
        kept = {t: v for t in texts if (v := self._cache.get(t)) is not None}
        new = [t for t in texts if t not in kept]
        if new:
            fresh = await self._embedder.embed(new, urgent=True)
            for text, row in zip(new, fresh):
                kept[text] = row
                self._cache.put(text, row.copy())  # a view would keep its whole batch alive
        return np.stack([kept[t] for t in texts])

    def _choose(self, question: str, q: np.ndarray | None, pool: list[tuple[Source, int, str]],
                dense: np.ndarray) -> Context:
        if not pool or q is None:
            return Context([], found=False)
        cosine = dense @ np.asarray(q, dtype=np.float32)
        lexical = self._lexical(question, [t for _, _, t in pool])
        scores = DENSE_SHARE * cosine + (1 - DENSE_SHARE) * lexical
        order = sorted(range(len(pool)), key=lambda k: (-scores[k], pool[k][0].n, pool[k][1]))
        best = float(scores[order[0]])
        picked: list[Scored] = []
        used = 0
        for k in order:
            source, position, text = pool[k]
            key = text.lower()
            # Documents repeat themselves, and chunks overlap: a sentence cut at a chunk's edge is part of
            # the whole one in the next chunk. Each is taken once, whole.
            if any(key in p.text.lower() for p in picked):
                continue
            part = next((i for i, p in enumerate(picked) if p.text.lower() in key), None)
            cost = tokens(text) + 2 - (tokens(picked[part].text) + 2 if part is not None else 0)
            if used + cost > self._budget:
                continue
            if part is not None:  # the whole sentence in place of its fragment, at the fragment's rank
                picked[part] = Scored(source, position, text, picked[part].score)
            else:
                picked.append(Scored(source, position, text, round(float(scores[k]), 4)))
            used += cost
        return Context(picked, found=best >= self._min_score, best=round(best, 4))

    def _lexical(self, question: str, texts: list[str]) -> np.ndarray:
        """The IDF-weighted share of the question's BM25 terms each sentence holds (IDF among these sentences)."""
        q = self._bm25.query(question)
        if q is None:
            return np.zeros(len(texts), dtype=np.float32)
        terms = set(q.indices)
        held = [terms.intersection(v.indices) for v in self._bm25.documents(texts)]
        n = len(texts)
        idf = {t: math.log(1 + (n + 1) / (1 + sum(t in h for h in held))) for t in terms}
        total = sum(idf.values())
        return np.array([sum(idf[t] for t in h) / total for h in held], dtype=np.float32)


def _clip(text: str, max_tokens: int) -> str:
    """A run-on "sentence" (a table, a list without stops) cut to a budget's share, on a word."""
    words = text.split()
    limit = int(max_tokens / TOKENS_PER_WORD)
    return text if len(words) <= limit else " ".join(words[:limit]) + " …"


class _Lru:
    """The last ``size`` texts' vectors (an OrderedDict is the whole of an LRU; no dependency for it)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._rows: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, text: str) -> np.ndarray | None:
        row = self._rows.get(text)
        if row is not None:
            self._rows.move_to_end(text)
        return row

    def put(self, text: str, row: np.ndarray) -> None:
        if self._size == 0:
            return
        self._rows[text] = row
        self._rows.move_to_end(text)
        while len(self._rows) > self._size:
            self._rows.popitem(last=False)
