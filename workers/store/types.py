"""What both vector stores take and give: points with a dense and a BM25 vector, batched hybrid searches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

from msgspec import Struct

from core.payload import DENSE, HEADING, SECTION, SPARSE

#: The layout of the stored points: 1, a dense vector only; 2, a dense and a BM25 (``bm25``) vector,
#: payload indexes on every filtered field, a contextual header per chunk.
SCHEMA: Final = 2
#: Most chunks read for one page's text (a page holds a few; a page of one huge table, a few dozen).
PAGE_CHUNKS_MAX: Final = 256


class Sparse(Struct, frozen=True, array_like=True):
    """A BM25 vector: token ids and weights (the Qdrant server's ids: qdrant-edge's Bm25 computes them)."""

    indices: list[int]
    values: list[float]


class PointIn(Struct, frozen=True):
    id: str
    vector: list[float]
    payload: dict[str, Any]
    sparse: Sparse | None = None
    #: BM25 of the section's heading, on the chunk the section starts with.
    heading: Sparse | None = None


class Hit(Struct, frozen=True):
    id: str
    score: float
    payload: dict[str, Any]
    #: After a fusion: each arm's normalized score of this hit (``dense``, ``sparse``, ``heading``), unweighted.
    arms: dict[str, float] = {}


class Search(Struct, frozen=True, kw_only=True):
    """One question's search in one collection, by the arms it has a vector for (a missing arm is not run):
    the dense one, BM25 over the chunks, and BM25 over section headings (a title field, as BM25F weighs
    titles: a question that names a section finds the chunk the section starts with)."""

    collection: str
    dense: list[float] | None = None
    sparse: Sparse | None = None
    heading: Sparse | None = None

    @property
    def arms(self) -> int:
        return (self.dense is not None) + (self.sparse is not None) + (self.heading is not None)

    def plan(self, fusion: Fusion, limit: int) -> list[Arm]:
        """The arm searches to run. A lone arm asks for ``limit`` hits with their payloads; arms to be fused
        ask for their candidates without payloads (the fused top's are fetched afterwards), but for the
        heading arm's section titles (for the heading match: workers.ranking)."""
        lone = self.arms == 1
        n = limit if lone else max(limit, fusion.candidates)
        arms = ([Arm("dense", DENSE, self.dense, fusion.dense_weight, n, lone)] if self.dense is not None else [])
        for arm, name, vector, weight, payload in (
                ("sparse", SPARSE, self.sparse, fusion.sparse_weight, lone),
                ("heading", HEADING, self.heading, fusion.heading_weight, True if lone else [SECTION])):
            if vector is not None:
                arms.append(Arm(arm, name, vector, weight, n, payload))
        return arms


class Arm(Struct, frozen=True):
    """One arm of a search: its name, the store's vector name, the query vector, its weight, how many hits,
    and which payload (all of it, none, or these keys)."""

    arm: str
    vector_name: str
    vector: list[float] | Sparse
    weight: float
    limit: int
    payload: bool | list[str] = True


class Fusion(Struct, frozen=True, kw_only=True):
    """How both arms' candidates become one ranking (from RetrievalSettings)."""

    method: str = "dbsf"
    rrf_k: int = 60
    dense_weight: float = 4.0
    sparse_weight: float = 1.0
    heading_weight: float = 2.0
    #: Candidates each arm hands to the fusion.
    candidates: int = 50


#: Reorders one search's fused candidates (workers.ranking.HeadingMatch).
Rerank = Callable[[Search, list[Hit]], list[Hit]]


class VectorStore(Protocol):
    async def upsert(self, points: list[PointIn]) -> None: ...

    async def search_batch(self, searches: list[Search], *, limit: int, fusion: Fusion,
                           rerank: Rerank | None = None) -> list[list[Hit]]:
        """Every search of a micro-batch as one batched call; a search of several arms is fused, and
        ``rerank`` reorders all of its fused candidates (their payloads not fetched yet) before the top
        ``limit`` is kept and given its payloads, in a second call for the whole batch."""
        ...

    async def count(self) -> int: ...

    async def count_document(self, document_id: str, collection: str, *, staged: bool = False) -> int:
        """Points of one document in ``collection`` (or in its staging area)."""
        ...

    async def publish(
        self, document_id: str, collection: str, *, chunks: int, staged: bool, replaces: list[str]
    ) -> None:
        """Make a fully indexed document visible and drop what it replaces, in that order.

        Unstages its points (if ``staged``), deletes its points at positions ``>= chunks``
        (left from an earlier chunking) and every point of the ``replaces`` documents: a
        query sees the old version or the new one, never neither.
        """
        ...

    async def delete_document(self, document_id: str, collection: str) -> int:
        """Delete every point of a document (visible or staged); returns how many there were."""
        ...

    async def page_chunks(self, document_id: str, collection: str, page: int) -> list[Hit]:
        """The published chunks of a document whose page span holds ``page`` (score 0), in no set order."""
        ...

    async def aclose(self) -> None: ...
