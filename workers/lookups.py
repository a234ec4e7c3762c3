"""Jobs on the queries stream that are not questions: embeddings (``POST /v1/embeddings``) and page texts.

Embedding jobs' texts go into the same embedder call as the micro-batch's questions; a page's text
is read from the store (workers own it). Each job's result and its ``done`` are written with the
batch's ``sources`` events, in the same round trip.
"""

from __future__ import annotations

import asyncio
import base64
import re
from typing import TYPE_CHECKING

import numpy as np

from core.payload import DEFAULT_COLLECTION, read_payload
from core.protocol import (
    PAGE_NOT_FOUND,
    UNSUPPORTED_PARAMETER,
    Done,
    Embed,
    Embeddings,
    Error,
    Event,
    PageChunk,
    PageRequest,
    PageText,
    Usage,
)

if TYPE_CHECKING:
    from workers.consumer import Delivery
    from workers.store import Hit, VectorStore

_WORD = re.compile(r"\S+")
#: Most words one chunk shares with the one before it that are looked for (RAG_INGEST_OVERLAP_WORDS is 20).
MAX_OVERLAP_WORDS = 80


def encode_vectors(rows: np.ndarray) -> list[str]:
    """Each row as little-endian float32, base64: what OpenAI's ``encoding_format: base64`` returns (and
    core.protocol.decode_vector reads)."""
    data = np.ascontiguousarray(rows, dtype="<f4")
    return [base64.b64encode(row.tobytes()).decode() for row in data]


def joined(texts: list[str]) -> str:
    """Consecutive chunks' texts as one, each overlap (the next chunk's first words repeating the text so far)
    kept once."""
    out = ""
    for text in texts:
        if not out:
            out = text
            continue
        tail = _WORD.findall(out[-2000:])[-MAX_OVERLAP_WORDS:]
        words = list(_WORD.finditer(text))
        k = next((k for k in range(min(len(tail), len(words)), 0, -1)
                  if tail[-k:] == [w.group() for w in words[:k]]), 0)
        out = out + (" " + text[words[k - 1].end():].lstrip() if k else "\n\n" + text)
    return out.rstrip()


def page_text(request: PageRequest, hits: list[Hit]) -> PageText:
    read = sorted(((read_payload(h.payload), h.id) for h in hits), key=lambda pair: pair[0].index)
    parts = [PageChunk(chunk_id=chunk_id, index=c.index, page=c.page, page_end=c.page_end, text=c.text,
                       section=c.section) for c, chunk_id in read]
    return PageText(document_id=request.document_id, page=request.page, text=joined([p.text for p in parts]),
                    chunks=parts)


class Lookups:
    def __init__(self, store: VectorStore, dim: int) -> None:
        self._store = store
        self._dim = dim

    def embedded(self, jobs: list[tuple[Delivery, Embed]], rows: np.ndarray) -> list[tuple[str, Event]]:
        """Each embedding job's vectors (its rows of ``rows``, in order) and its ``done``."""
        events: list[tuple[str, Event]] = []
        start = 0
        for delivery, embed in jobs:
            assert delivery.job is not None
            mine = rows[start : start + len(embed.texts)]
            start += len(embed.texts)
            if embed.dimensions is not None and embed.dimensions != self._dim:
                events.append((delivery.job.id, Error(code=UNSUPPORTED_PARAMETER, message=(
                    f"dimensions: the embedder gives {self._dim}-dimensional vectors, not {embed.dimensions}"))))
                continue
            # Usage in words: the embedder's tokens are its own business (OpenAI-compatible ones count theirs).
            words = sum(len(t.split()) for t in embed.texts)
            events += [(delivery.job.id, Embeddings(vectors=encode_vectors(mine), dim=self._dim)),
                       (delivery.job.id, Done(usage=Usage(prompt_tokens=words)))]
        return events

    async def pages(self, jobs: list[tuple[Delivery, PageRequest]]) -> list[tuple[str, Event]]:
        """Each page job's text and its ``done`` (an error for a page with no indexed text)."""
        found = await asyncio.gather(*(self._store.page_chunks(r.document_id, r.collection or DEFAULT_COLLECTION,
                                                               r.page) for _, r in jobs))
        events: list[tuple[str, Event]] = []
        for (delivery, request), hits in zip(jobs, found):
            assert delivery.job is not None
            if not hits:
                events.append((delivery.job.id, Error(code=PAGE_NOT_FOUND, message=(
                    f"page {request.page} of document {request.document_id} has no indexed text"))))
                continue
            events += [(delivery.job.id, page_text(request, hits)), (delivery.job.id, Done(chunks=len(hits)))]
        return events
