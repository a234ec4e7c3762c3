"""The filters both stores search, publish and delete by, and the payload indexes that serve them, built once.

qdrant-edge and qdrant-client take the same keywords (``Filter(must=)``, ``FieldCondition(key=,
match=, range=)``, ``MatchValue(value=)``, ``MatchAny(any=)``, a range with ``gte=``, index
parameters with ``is_tenant=`` ...); each store hands over its own classes and gets its own objects back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from core.payload import COLLECTION, DOCUMENT_ID, INDEX


class Models(NamedTuple):
    """A client's filter classes."""

    filter: Callable[..., Any]
    condition: Callable[..., Any]
    match_value: Callable[..., Any]
    match_any: Callable[..., Any]
    range: Callable[..., Any]


def in_collection(models: Models, collection: str) -> Any:
    """The points a question in ``collection`` searches (and whose IDF it is scored by)."""
    return models.filter(must=[_match(models, COLLECTION, collection)])


def of_documents(models: Models, document_id: str | list[str], collections: list[str], *,
                 from_index: int | None = None) -> Any:
    """The points of a document (or of any of several) in any of ``collections``; with ``from_index``,
    only those at that position in their document or later (left by an earlier, longer chunking)."""
    must = [_match(models, DOCUMENT_ID, document_id), _match(models, COLLECTION, collections)]
    if from_index is not None:
        must.append(models.condition(key=INDEX, range=models.range(gte=float(from_index))))
    return models.filter(must=must)


def _match(models: Models, key: str, value: str | list[str]) -> Any:
    match = models.match_any(any=value) if isinstance(value, list) else models.match_value(value=value)
    return models.condition(key=key, match=match)


def payload_indexes(keyword: Callable[..., Any], integer: Callable[..., Any]) -> list[tuple[str, Any]]:
    """Every payload field that searches, publishing and deleting filter on, with its index's parameters
    (``keyword`` and ``integer`` make a client's keyword and integer index parameters)."""
    return [
        # A tenant index: the store keeps each collection's points together, with HNSW links per collection.
        (COLLECTION, keyword(is_tenant=True)),
        # Publishing and deleting filter on these, searches do not: no HNSW links of their own (they cost the
        # optimizer a graph per value).
        (DOCUMENT_ID, keyword(enable_hnsw=False)),
        (INDEX, integer(lookup=True, range=True, enable_hnsw=False)),
    ]
