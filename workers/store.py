"""The vector store: an embedded qdrant-edge shard, or a Qdrant server through AsyncQdrantClient.

Both keep one point per chunk with its text, file and page span in the payload, and
isolate sets of documents by a ``collection`` payload field.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from msgspec import Struct

from core.errors import StoreLocked, Unavailable

DEFAULT_COLLECTION = "default"


def staging(collection: str) -> str:
    """The hidden ``collection`` value of a document's points until it is published.

    Collection names are letters, digits, '_' and '-' (ingest and the API check), so
    this value never names a real collection and no query searches it.
    """
    return f"~staging:{collection}"


class PointIn(Struct, frozen=True):
    id: str
    vector: list[float]
    payload: dict[str, Any]


class Hit(Struct, frozen=True):
    id: str
    score: float
    payload: dict[str, Any]


class VectorStore(Protocol):
    async def upsert(self, points: list[PointIn]) -> None: ...

    async def search_batch(
        self, vectors: np.ndarray, *, limit: int, collection: list[str]
    ) -> list[list[Hit]]:
        """One search per row of ``vectors``, each in its own collection, as one batched call."""
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

    async def aclose(self) -> None: ...


class EdgeStore:
    """A qdrant-edge shard on local disk, owned by this one process (its WAL is locked)."""

    def __init__(self, path: Path, dim: int) -> None:
        import qdrant_edge as qe

        self._qe = qe
        # The shard is not documented as thread-safe: every call goes through one thread.
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="qdrant-edge")
        config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine))
        try:
            if path.is_dir() and any(path.iterdir()):
                self._shard = qe.EdgeShard.load(str(path), config)
            else:
                path.mkdir(parents=True, exist_ok=True)
                self._shard = qe.EdgeShard.create(str(path), config)
        except Exception as exc:
            self._pool.shutdown()
            if "WouldBlock" in str(exc):
                raise StoreLocked(
                    f"the embedded vector store at {path} is already open in another worker process. "
                    "The embedded store (qdrant-edge) serves one worker process only: run one worker "
                    "with --concurrency N, or set RAG_QDRANT_URL to a Qdrant server to run several replicas."
                ) from None
            raise

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def upsert(self, points: list[PointIn]) -> None:
        qe = self._qe
        op = qe.UpdateOperation.upsert_points(
            [qe.Point(uuid.UUID(p.id), p.vector, p.payload) for p in points]
        )
        await self._call(self._shard.update, op)

    async def search_batch(self, vectors: np.ndarray, *, limit: int, collection: list[str]) -> list[list[Hit]]:
        qe = self._qe
        requests = [
            qe.QueryRequest(
                limit=limit,
                query=qe.Query.Nearest(vector.tolist()),
                filter=qe.Filter(must=[qe.FieldCondition("collection", match=qe.MatchValue(name))]),
                with_payload=True,
            )
            for vector, name in zip(vectors, collection)
        ]
        results = await self._call(self._shard.query_batch, qe.QueryBatchRequest(requests))
        return [[Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points] for points in results]

    async def count(self) -> int:
        return int(await self._call(self._shard.count, self._qe.CountRequest(exact=True)))

    def _match(self, key: str, value: str | list[str]) -> Any:
        qe = self._qe
        match = qe.MatchAny(value) if isinstance(value, list) else qe.MatchValue(value)
        return qe.FieldCondition(key, match=match)

    def _document(self, document_id: str | list[str], collections: list[str]) -> Any:
        return self._qe.Filter(must=[self._match("document_id", document_id), self._match("collection", collections)])

    async def count_document(self, document_id: str, collection: str, *, staged: bool = False) -> int:
        request = self._qe.CountRequest(
            exact=True, filter=self._document(document_id, [staging(collection) if staged else collection])
        )
        return int(await self._call(self._shard.count, request))

    async def publish(
        self, document_id: str, collection: str, *, chunks: int, staged: bool, replaces: list[str]
    ) -> None:
        qe = self._qe
        both = [collection, staging(collection)]
        ops = []
        if staged:
            ops.append(qe.UpdateOperation.set_payload_by_filter(
                self._document(document_id, [staging(collection)]), {"collection": collection}))
        ops.append(qe.UpdateOperation.delete_points_by_filter(qe.Filter(must=[
            self._match("document_id", document_id), self._match("collection", both),
            qe.FieldCondition("index", range=qe.RangeFloat(gte=float(chunks))),
        ])))
        if replaces:
            ops.append(qe.UpdateOperation.delete_points_by_filter(self._document(replaces, both)))

        def apply() -> None:
            # One call on the shard's only thread: no search runs between these updates.
            for op in ops:
                self._shard.update(op)

        await self._call(apply)

    async def delete_document(self, document_id: str, collection: str) -> int:
        where = self._document(document_id, [collection, staging(collection)])
        qe = self._qe

        def delete() -> int:
            n = int(self._shard.count(qe.CountRequest(exact=True, filter=where)))
            self._shard.update(qe.UpdateOperation.delete_points_by_filter(where))
            return n

        return int(await self._call(delete))

    async def aclose(self) -> None:
        def close() -> None:
            self._shard.flush()
            self._shard.close()

        await self._call(close)
        self._pool.shutdown()


class ServerStore:
    """A Qdrant server (or ``:memory:``) through AsyncQdrantClient; safe for many worker replicas."""

    def __init__(self, client: Any, collection: str, dim: int) -> None:
        self._client = client
        self._collection = collection
        self._dim = dim

    @classmethod
    async def open(cls, url: str, api_key: str | None, collection: str, dim: int) -> ServerStore:
        from qdrant_client import AsyncQdrantClient

        client = AsyncQdrantClient(location=url) if url == ":memory:" else AsyncQdrantClient(url=url, api_key=api_key)
        store = cls(client, collection, dim)
        await store.ensure_collection()
        return store

    async def ensure_collection(self) -> None:
        from qdrant_client import models

        try:
            if not await self._client.collection_exists(self._collection):
                await self._client.create_collection(
                    self._collection,
                    vectors_config=models.VectorParams(size=self._dim, distance=models.Distance.COSINE),
                )
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    await self._client.create_payload_index(
                        self._collection, "collection", models.PayloadSchemaType.KEYWORD
                    )
                # Publishing and deleting a document filter on these (":memory:" warns it has no indexes).
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    await self._client.create_payload_index(
                        self._collection, "document_id", models.PayloadSchemaType.KEYWORD
                    )
                    await self._client.create_payload_index(
                        self._collection, "index", models.PayloadSchemaType.INTEGER
                    )
        except Exception as exc:  # noqa: BLE001 - qdrant-client raises transport-specific types (HTTP, gRPC)
            if "already exists" in str(exc):
                return  # another replica created it first
            raise Unavailable(f"Qdrant is unavailable: {exc}", code="qdrant_unavailable") from None

    async def upsert(self, points: list[PointIn]) -> None:
        from qdrant_client import models

        await self._client.upsert(
            self._collection,
            points=[models.PointStruct(id=p.id, vector=p.vector, payload=p.payload) for p in points],
            wait=True,
        )

    async def search_batch(self, vectors: np.ndarray, *, limit: int, collection: list[str]) -> list[list[Hit]]:
        from qdrant_client import models

        requests = [
            models.QueryRequest(
                query=vector.tolist(),
                limit=limit,
                filter=models.Filter(
                    must=[models.FieldCondition(key="collection", match=models.MatchValue(value=name))]
                ),
                with_payload=True,
            )
            for vector, name in zip(vectors, collection)
        ]
        responses = await self._client.query_batch_points(self._collection, requests=requests)
        return [
            [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]
            for response in responses
        ]

    async def count(self) -> int:
        return int((await self._client.count(self._collection, exact=True)).count)

    @staticmethod
    def _document(document_id: str | list[str], collections: list[str], *, min_index: int | None = None) -> Any:
        from qdrant_client import models

        def match(key: str, value: str | list[str]) -> models.FieldCondition:
            m = models.MatchAny(any=value) if isinstance(value, list) else models.MatchValue(value=value)
            return models.FieldCondition(key=key, match=m)

        must: list[Any] = [match("document_id", document_id), match("collection", collections)]
        if min_index is not None:
            must.append(models.FieldCondition(key="index", range=models.Range(gte=min_index)))
        return models.Filter(must=must)

    async def count_document(self, document_id: str, collection: str, *, staged: bool = False) -> int:
        where = self._document(document_id, [staging(collection) if staged else collection])
        return int((await self._client.count(self._collection, count_filter=where, exact=True)).count)

    async def publish(
        self, document_id: str, collection: str, *, chunks: int, staged: bool, replaces: list[str]
    ) -> None:
        from qdrant_client import models

        both = [collection, staging(collection)]
        # Three calls, in an order that may show both versions for an instant, never neither.
        if staged:
            await self._client.set_payload(
                self._collection, payload={"collection": collection},
                points=self._document(document_id, [staging(collection)]), wait=True,
            )
        await self._client.delete(
            self._collection,
            points_selector=models.FilterSelector(filter=self._document(document_id, both, min_index=chunks)),
            wait=True,
        )
        if replaces:
            await self._client.delete(
                self._collection, points_selector=models.FilterSelector(filter=self._document(replaces, both)),
                wait=True,
            )

    async def delete_document(self, document_id: str, collection: str) -> int:
        from qdrant_client import models

        where = self._document(document_id, [collection, staging(collection)])
        n = int((await self._client.count(self._collection, count_filter=where, exact=True)).count)
        await self._client.delete(self._collection, points_selector=models.FilterSelector(filter=where), wait=True)
        return n

    async def aclose(self) -> None:
        await self._client.close()
