"""The vectors of points indexed before this schema, rebuilt from what their payload kept."""

from __future__ import annotations

from typing import Any

from core.payload import NAV_KIND, indexed_text, legacy_context, read_payload, starts_section
from workers.sparse import Bm25Encoder
from workers.store.types import Sparse


def legacy_sparse(payloads: list[dict[str, Any]], bm25: Bm25Encoder) -> list[tuple[Sparse, Sparse | None]]:
    """(BM25 of the chunk, BM25 of its heading or None) for each stored payload.

    A point of schema 1 has no contextual header (its title and section stand for it) and no
    position in its section: the chunk whose text begins with its section's heading is the one
    the section starts with.
    """
    texts = []
    headings: list[Sparse | None] = []
    for p in payloads:
        chunk = read_payload(p)
        texts.append(indexed_text(chunk.context or legacy_context(p), chunk.text))
        headings.append(bm25.heading(chunk.section) if starts_section(p) and chunk.kind != NAV_KIND else None)
    return list(zip(bm25.documents(texts), headings))
