"""A Qdrant server (or ``:memory:``) through AsyncQdrantClient; safe for many worker replicas.

The collection ``RAG_QDRANT_COLLECTION`` holds the current schema. One of schema 1 (a dense
vector only: a server collection cannot gain a vector) is copied at start into
``<name>_v2`` with BM25 vectors, which then serves; the old one is left for the operator to
drop. The copy is marked complete in the new collection's metadata only once every point is
in, so no query ever searches a half-copied collection.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import structlog

from core.errors import Unavailable
from core.payload import COLLECTION, DENSE, HEADING, SPARSE, staging
from workers.sparse import Bm25Encoder
from workers.store import filters
from workers.store.fusion import fetched, rank, unfetched
from workers.store.migration import legacy_sparse
from workers.store.types import SCHEMA, Arm, Fusion, Hit, PointIn, Rerank, Search, Sparse

log = structlog.get_logger("workers.store")

#: Points copied per step of a migration.
MIGRATE_BATCH = 256
#: The new collection's metadata: its schema, and whether a migration finished filling it.
META_SCHEMA = "rag_schema"
META_COMPLETE = "rag_complete"


def _models() -> Any:
    from qdrant_client import models

    return models


class ServerStore:
    def __init__(self, client: Any, collection: str, dim: int, *, bm25: Bm25Encoder | None = None) -> None:
        self._client = client
        self._collection = collection
        self._dim = dim
        self._bm25 = bm25 or Bm25Encoder()

    @property
    def collection(self) -> str:
        """The collection that serves (``<name>_v2`` after a migration)."""
        return self._collection

    @classmethod
    async def open(cls, url: str, api_key: str | None, collection: str, dim: int,
                   *, bm25: Bm25Encoder | None = None) -> ServerStore:
        from qdrant_client import AsyncQdrantClient

        client = AsyncQdrantClient(location=url) if url == ":memory:" else AsyncQdrantClient(url=url, api_key=api_key)
        store = cls(client, collection, dim, bm25=bm25)
        try:
            await store.ensure_collection()
        except Unavailable:
            await client.close()
            raise
        return store

    async def ensure_collection(self) -> None:
        try:
            name = self._collection
            if not await self._client.collection_exists(name):
                await self._create(name, complete=True)
            elif not await self._current_schema(name):
                self._collection = await self._migrate(name)
            await self._ensure_indexes(self._collection)
        except Unavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - qdrant-client raises transport-specific types (HTTP, gRPC)
            raise Unavailable(f"Qdrant is unavailable: {exc}", code="qdrant_unavailable") from None

    async def _current_schema(self, name: str) -> bool:
        info = await self._client.get_collection(name)
        return {SPARSE, HEADING} <= set(info.config.params.sparse_vectors or {})

    async def _create(self, name: str, *, complete: bool) -> None:
        models = _models()
        try:
            await self._client.create_collection(
                name,
                vectors_config=models.VectorParams(size=self._dim, distance=models.Distance.COSINE),
                sparse_vectors_config={name: models.SparseVectorParams(modifier=models.Modifier.IDF)
                                       for name in (SPARSE, HEADING)},
                metadata={META_SCHEMA: SCHEMA, META_COMPLETE: complete},
            )
        except Exception as exc:
            if "already exists" not in str(exc):
                raise  # else another replica created it first
        await self._ensure_indexes(name)

    async def _ensure_indexes(self, name: str) -> None:
        models = _models()
        keyword, integer = models.KeywordIndexType.KEYWORD, models.IntegerIndexType.INTEGER
        indexes = filters.payload_indexes(functools.partial(models.KeywordIndexParams, type=keyword),
                                          functools.partial(models.IntegerIndexParams, type=integer))
        present = set((await self._client.get_collection(name)).payload_schema or {})
        with warnings.catch_warnings():  # ":memory:" warns that it has no payload indexes
            warnings.simplefilter("ignore", UserWarning)
            for field, schema in indexes:
                if field not in present:
                    await self._client.create_payload_index(name, field, schema)

    async def _migrate(self, old: str) -> str:
        """Copy a schema-1 collection into ``<old>_v2`` with BM25 vectors (resumable: upserts by id)."""
        new = f"{old}_v{SCHEMA}"
        if await self._client.collection_exists(new):
            meta = (await self._client.get_collection(new)).config.metadata or {}
            if meta.get(META_COMPLETE):
                log.info("store_schema1_kept", old=old, serving=new)
                return new
        else:
            await self._create(new, complete=False)
        total = int((await self._client.count(old, exact=True)).count)
        log.warning("store_migrating", collection=old, into=new, schema_from=1, schema_to=SCHEMA, points=total)
        offset = None
        copied = 0
        while True:
            records, offset = await self._client.scroll(old, limit=MIGRATE_BATCH, offset=offset,
                                                        with_payload=True, with_vectors=True)
            if records:
                await self._copy(new, records)
                copied += len(records)
            if offset is None:
                break
        await self._client.update_collection(new, metadata={META_SCHEMA: SCHEMA, META_COMPLETE: True})
        log.warning("store_migrated", collection=old, into=new, points=copied,
                    note=f"the schema-1 collection {old!r} is kept: drop it once {new!r} serves you")
        return new

    async def _copy(self, target: str, records: list[Any]) -> None:
        points = []
        for r, (sparse, heading) in zip(records, legacy_sparse([r.payload or {} for r in records], self._bm25)):
            dense = r.vector.get(DENSE) if isinstance(r.vector, dict) else r.vector
            points.append(_models().PointStruct(id=r.id, payload=r.payload,
                                                vector={DENSE: dense, **_sparse_vectors(sparse, heading)}))
        await self._client.upsert(target, points=points, wait=True)

    async def upsert(self, points: list[PointIn]) -> None:
        models = _models()
        await self._client.upsert(
            self._collection,
            points=[models.PointStruct(id=p.id, vector={DENSE: p.vector, **_sparse_vectors(p.sparse, p.heading)},
                                       payload=p.payload) for p in points],
            wait=True,
        )

    def _request(self, search: Search, arm: Arm) -> Any:
        models = _models()
        where = filters.in_collection(_filter_models(), search.collection)
        if isinstance(arm.vector, list):
            return models.QueryRequest(query=arm.vector, filter=where, limit=arm.limit, with_payload=arm.payload)
        # IDF over the question's own collection, not the whole server collection.
        return models.QueryRequest(query=models.SparseVector(indices=arm.vector.indices, values=arm.vector.values),
                                   using=arm.vector_name, filter=where, limit=arm.limit, with_payload=arm.payload,
                                   params=models.SearchParams(idf=models.IdfCorpusParams(corpus=where)))

    async def search_batch(self, searches: list[Search], *, limit: int, fusion: Fusion,
                           rerank: Rerank | None = None) -> list[list[Hit]]:
        plans = [s.plan(fusion, limit) for s in searches]
        requests = [self._request(s, arm) for s, plan in zip(searches, plans) for arm in plan]
        if not requests:
            return [[] for _ in searches]
        responses = await self._client.query_batch_points(self._collection, requests=requests)
        results = ([Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in r.points] for r in responses)
        ranked = rank(searches, plans, results, fusion=fusion, limit=limit, rerank=rerank)
        ids = unfetched(plans, ranked)
        records = await self._client.retrieve(self._collection, ids=ids, with_payload=True) if ids else []
        return fetched(plans, ranked, {str(r.id): dict(r.payload or {}) for r in records})

    async def count(self) -> int:
        return int((await self._client.count(self._collection, exact=True)).count)

    @staticmethod
    def _document(document_id: str | list[str], collections: list[str], *, from_index: int | None = None) -> Any:
        return filters.of_documents(_filter_models(), document_id, collections, from_index=from_index)

    async def count_document(self, document_id: str, collection: str, *, staged: bool = False) -> int:
        where = self._document(document_id, [staging(collection) if staged else collection])
        return int((await self._client.count(self._collection, count_filter=where, exact=True)).count)

    async def publish(
        self, document_id: str, collection: str, *, chunks: int, staged: bool, replaces: list[str]
    ) -> None:
        models = _models()
        both = [collection, staging(collection)]
        # Three calls, in an order that may show both versions for an instant, never neither.
        if staged:
            await self._client.set_payload(
                self._collection, payload={COLLECTION: collection},
                points=self._document(document_id, [staging(collection)]), wait=True,
            )
        await self._client.delete(
            self._collection,
            points_selector=models.FilterSelector(filter=self._document(document_id, both, from_index=chunks)),
            wait=True,
        )
        if replaces:
            await self._client.delete(
                self._collection, points_selector=models.FilterSelector(filter=self._document(replaces, both)),
                wait=True,
            )

    async def delete_document(self, document_id: str, collection: str) -> int:
        models = _models()
        where = self._document(document_id, [collection, staging(collection)])
        n = int((await self._client.count(self._collection, count_filter=where, exact=True)).count)
        await self._client.delete(self._collection, points_selector=models.FilterSelector(filter=where), wait=True)
        return n

    async def aclose(self) -> None:
        await self._client.close()


def _filter_models() -> filters.Models:
    models = _models()
    return filters.Models(models.Filter, models.FieldCondition, models.MatchValue, models.MatchAny, models.Range)


def _sparse_vectors(sparse: Sparse | None, heading: Sparse | None) -> dict[str, Any]:
    models = _models()
    out = {}
    for name, vector in ((SPARSE, sparse), (HEADING, heading)):
        if vector is not None:
            out[name] = models.SparseVector(indices=vector.indices, values=vector.values)
    return out
