"""The vector store: an embedded qdrant-edge shard, or a Qdrant server through AsyncQdrantClient.

Both keep one point per chunk, with a dense vector (the embedder's), a BM25 sparse vector and
the chunk's payload (core.payload), isolate sets of documents by the ``collection`` payload
field, and answer a micro-batch of hybrid searches in one call (prefetch + fusion).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.store.types import SCHEMA, Fusion, Hit, PointIn, Search, Sparse, VectorStore

if TYPE_CHECKING:
    from core.settings import Settings
    from workers.sparse import Bm25Encoder

__all__ = ["SCHEMA", "Fusion", "Hit", "PointIn", "Search", "Sparse", "VectorStore", "fusion_of", "open_store"]


async def open_store(settings: Settings, dim: int, bm25: Bm25Encoder) -> VectorStore:
    q = settings.qdrant
    if q.url:
        from workers.store.server import ServerStore

        return await ServerStore.open(q.url, q.api_key, q.collection, dim, bm25=bm25)
    from workers.store.edge import EdgeStore

    return await EdgeStore.open(settings.qdrant_path, dim, bm25=bm25)


def fusion_of(settings: Settings) -> Fusion:
    r = settings.retrieval
    return Fusion(method=r.fusion, rrf_k=r.rrf_k, dense_weight=r.dense_weight, sparse_weight=r.sparse_weight,
                  heading_weight=r.heading_weight, candidates=r.candidates)
