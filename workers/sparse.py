"""BM25 sparse vectors, computed in the worker by qdrant-edge's ``Bm25`` for both stores.

Its token ids are those of the Qdrant server's own BM25, so the same vectors serve the
embedded shard and a server; the stores apply IDF at query time (the ``idf`` modifier).
"""

from __future__ import annotations

from typing import Final

import qdrant_edge as qe

from core.text import unnumbered
from workers.store.types import Sparse

#: BM25's expected document length, in its own tokens (stopwords dropped): what a chunk of the
#: default size (at most 120 words, 160 embedder tokens) with its header holds on average (92 words,
#: 43 distinct terms on R's manuals).
AVG_LEN: Final = 60.0
#: The same for a section heading ("Configuration options", "abbreviate").
HEADING_AVG_LEN: Final = 4.0


class Bm25Encoder:
    """English word tokens, lowercased, stopwords dropped, stemmed (qdrant-edge's defaults); the query
    vector is the same for chunks and headings (one weight per token: IDF comes from the store)."""

    def __init__(self) -> None:
        self._model = qe.Bm25(qe.Bm25Config(avg_len=AVG_LEN))
        self._headings = qe.Bm25(qe.Bm25Config(avg_len=HEADING_AVG_LEN))

    def documents(self, texts: list[str]) -> list[Sparse]:
        out = []
        for text in texts:
            v = self._model.embed_document(text)
            out.append(Sparse(v.indices, v.values))
        return out

    def heading(self, title: str | None) -> Sparse | None:
        """A section heading's vector; None for none, or one of stopwords only."""
        if not title:
            return None
        v = self._headings.embed_document(unnumbered(title))
        return Sparse(v.indices, v.values) if v.indices else None

    def query(self, text: str) -> Sparse | None:
        """None for a question with no searchable word (only stopwords or symbols): the dense arm alone."""
        v = self._model.embed_query(text)
        return Sparse(v.indices, v.values) if v.indices else None
