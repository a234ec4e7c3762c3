"""After fusion: a question that names a section gets the chunk the section starts with first.

"Tell me about Using scan directly", "Which section covers Debugging Symbols?": every word of a
heading is in the question and makes up at least half of its words. The fused ranking
already favours that section's chunks (the heading arm, and every chunk's header), but
among them it has no reason to put the section's first chunk first, nor to put the named
section above others that share its words, and with the dense arm weighted up for questions
in a user's own words, the chunk can rank far down. The store cannot test that condition (it
is about the question's words, not a payload field), so it is applied here, to every fused
candidate before the top is cut: such a chunk gains the strongest arm's best score, in the
measure of its heading arm's score.
"""

from __future__ import annotations

import functools
from typing import Final

from core.payload import SECTION, starts_section
from core.text import unnumbered
from workers.sparse import Bm25Encoder
from workers.store import Fusion, Hit, Sparse

#: Share of the question's words (BM25 tokens) the heading must make up.
QUESTION_SHARE: Final = 0.5


class HeadingMatch:
    def __init__(self, bm25: Bm25Encoder) -> None:
        self._bm25 = bm25

    @functools.lru_cache(maxsize=65_536)  # noqa: B019 - one instance per worker, for its life
    def _tokens(self, heading: str) -> frozenset[int]:
        v = self._bm25.query(unnumbered(heading))
        return frozenset(v.indices) if v is not None else frozenset()

    def names(self, question: Sparse | None, hit: Hit) -> bool:
        """The question names the section this chunk starts (only such chunks have a heading vector: a hit
        of the heading arm is one; a hit of fused arms without it, or of one arm alone, is asked its payload)."""
        section = hit.payload.get(SECTION)
        if question is None or not section:
            return False
        if not ("heading" in hit.arms if hit.arms else starts_section(hit.payload)):
            return False
        heading = self._tokens(str(section))
        words = set(question.indices)
        return bool(heading) and heading <= words and len(heading) >= QUESTION_SHARE * len(words)

    def rerank(self, question: Sparse | None, hits: list[Hit], fusion: Fusion) -> list[Hit]:
        """``hits`` (fused, or of one arm), a named section's first chunk moved up."""
        if question is None or not hits:
            return hits
        # The strongest arm at its best (its weight times a normalized 1 in DBSF, or 1 / (k + 1) in RRF), in
        # the measure of the heading arm's own score: of two named sections ("What is R?" and "rgb" for
        # "what is rgb for in R?") the one whose heading matches better (rarer words) wins.
        weight = max(fusion.dense_weight, fusion.sparse_weight, fusion.heading_weight)
        best = 1.0 if fusion.method == "dbsf" else 1 / (fusion.rrf_k + 1)
        # A fused hit the heading arm did not find gets nothing; a hit of one arm alone (no arms kept), the best.
        scored = [(h.score + weight * h.arms.get("heading", 0.0 if h.arms else best) if self.names(question, h)
                   else h.score, i, h) for i, h in enumerate(hits)]
        if all(s == h.score for s, _, h in scored):
            return hits
        scored.sort(key=lambda t: (-t[0], t[1]))
        return [Hit(h.id, s, h.payload, h.arms) for s, _, h in scored]

