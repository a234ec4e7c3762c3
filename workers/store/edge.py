"""The embedded store: a qdrant-edge shard on local disk, owned by this one process (its WAL is locked).

Under the store's folder (``<data_dir>/qdrant``) live generations of the shard, ``gen-<n>/``,
and a file ``current`` naming the live one (replaced atomically). A new generation is an
optimized copy of the live one (see :mod:`workers.store.optimizer`): qdrant-edge has no
optimizer thread, and ``EdgeShard.optimize()`` holds the GIL for as long as it runs.

A folder holding a shard of schema 1 (a dense vector only, the shard files directly in it)
is moved into ``gen-0`` and given its BM25 vectors at start, before any query is taken.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from core.errors import StoreLocked
from core.payload import COLLECTION, DENSE, HEADING, SPARSE, staging
from workers.sparse import Bm25Encoder
from workers.store import filters
from workers.store.fusion import fetched, rank, unfetched
from workers.store.migration import legacy_sparse
from workers.store.types import SCHEMA, Arm, Fusion, Hit, PointIn, Rerank, Search, Sparse

log = structlog.get_logger("workers.store")

CURRENT = "current"
#: What a shard folder holds (the first generation's files, when they lie in the store's folder itself).
SHARD_FILES = ("wal", "segments", "edge_config.json")
#: Points given their BM25 vectors per step of a migration.
MIGRATE_BATCH = 256
#: In each generation's folder: the schema its points are in (see types.SCHEMA).
SCHEMA_FILE = "rag-schema"


def _qe() -> Any:
    import qdrant_edge as qe

    return qe


#: A segment past this size (KB) gets its HNSW graph when optimized: 5,300 MiniLM vectors, so that every
#: optimization the worker starts (RAG_RETRIEVAL_OPTIMIZE_POINTS, 10,000 by default) builds one.
INDEXING_THRESHOLD_KB = 8_000


def shard_config(dim: int) -> Any:
    qe = _qe()
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
        sparse_vectors={name: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf) for name in (SPARSE, HEADING)},
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=INDEXING_THRESHOLD_KB),
    )


def read_current(root: Path) -> str | None:
    try:
        return (root / CURRENT).read_text().strip() or None
    except FileNotFoundError:
        return None


def write_current(root: Path, generation: str) -> None:
    tmp = root / f"{CURRENT}.tmp"
    tmp.write_text(generation + "\n")
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, root / CURRENT)


def next_generation(generation: str) -> str:
    return f"gen-{int(generation.removeprefix('gen-')) + 1}"


def _adopt_legacy_layout(root: Path) -> None:
    """Schema 1 kept the shard's files in the store's folder: move them into ``gen-0`` (resumable)."""
    moving = root / "gen-0.moving"
    if not moving.exists() and not any((root / name).exists() for name in SHARD_FILES):
        return
    log.warning("store_layout_migrating", path=str(root), into="gen-0")
    moving.mkdir(exist_ok=True)
    for entry in root.iterdir():
        if entry != moving:
            entry.rename(moving / entry.name)
    moving.rename(root / "gen-0")
    write_current(root, "gen-0")


def _locked(path: Path) -> StoreLocked:
    return StoreLocked(
        f"the embedded vector store at {path} is already open in another worker process. "
        "The embedded store (qdrant-edge) serves one worker process only: run one worker "
        "with --concurrency N, or set RAG_QDRANT_URL to a Qdrant server to run several replicas."
    )


def _open_shard(path: Path, dim: int, bm25: Bm25Encoder) -> Any:
    """Load (or create) the shard at ``path`` in the current schema, migrating an older one first."""
    qe = _qe()
    config = shard_config(dim)
    try:
        if not path.is_dir() or not any(path.iterdir()):
            path.mkdir(parents=True, exist_ok=True)
            shard = qe.EdgeShard.create(str(path), config)
            write_schema(path)
        else:
            try:
                shard = qe.EdgeShard.load(str(path), config)
            except Exception as exc:
                if "incompatible" not in str(exc).lower():
                    raise
                _add_sparse_vectors(path)  # a shard of schema 1: a dense vector only
                shard = qe.EdgeShard.load(str(path), config)
            if read_schema(path) < SCHEMA:
                migrate(shard, path, bm25)
    except Exception as exc:
        if "WouldBlock" in str(exc):
            raise _locked(path) from None
        raise
    ensure_indexes(shard)
    return shard


def read_schema(path: Path) -> int:
    """The schema a shard's points were written (or migrated) in; 1 before the file existed."""
    try:
        return int((path / SCHEMA_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return 1


def write_schema(path: Path) -> None:
    (path / SCHEMA_FILE).write_text(f"{SCHEMA}\n")


def ensure_indexes(shard: Any) -> None:
    present = set(shard.info().payload_schema)
    qe = _qe()
    for field, schema in filters.payload_indexes(qe.KeywordIndexParams, qe.IntegerIndexParams):
        if field not in present:
            shard.update(qe.UpdateOperation.create_field_index(field, schema))


def _add_sparse_vectors(path: Path) -> None:
    qe = _qe()
    shard = qe.EdgeShard.load(str(path))
    try:
        for name in (SPARSE, HEADING):
            try:
                shard.update(qe.UpdateOperation.create_sparse_vector(name, modifier=qe.Modifier.Idf))
            except Exception as exc:
                if "exist" not in str(exc).lower():  # a migration cut short had added it
                    raise
        shard.flush()
    finally:
        shard.close()


def migrate(shard: Any, path: Path, bm25: Bm25Encoder) -> None:
    """Give every point of a schema-1 shard its BM25 vectors (from its stored text and section), in place.

    Runs before the worker takes any job, so no query sees a half-migrated store; the schema file
    is written last, so a crash part way runs the (idempotent) pass again at the next start.
    """
    qe = _qe()
    total = shard.count(qe.CountRequest(exact=True))
    log.warning("store_migrating", path=str(path), schema_from=read_schema(path), schema_to=SCHEMA, points=total,
                what="adding BM25 vectors and payload indexes; `python -m ingest --reindex` re-chunks "
                     "the documents by section")
    ensure_indexes(shard)
    started = time.monotonic()
    done = 0
    offset = None
    while True:
        records, offset = shard.scroll(qe.ScrollRequest(limit=MIGRATE_BATCH, offset=offset, with_payload=True))
        vectors = legacy_sparse([dict(r.payload or {}) for r in records], bm25)
        if records:
            shard.update(qe.UpdateOperation.update_vectors([
                qe.PointVectors(r.id, _sparse_vectors(qe, sparse, heading))
                for r, (sparse, heading) in zip(records, vectors)
            ]))
        done += len(records)
        if offset is None:
            break
    shard.flush()
    write_schema(path)
    log.warning("store_migrated", path=str(path), points=done, seconds=round(time.monotonic() - started, 1))


def _sparse_vectors(qe: Any, sparse: Sparse | None, heading: Sparse | None) -> dict[str, Any]:
    out = {}
    if sparse is not None:
        out[SPARSE] = qe.SparseVector(sparse.indices, sparse.values)
    if heading is not None:
        out[HEADING] = qe.SparseVector(heading.indices, heading.values)
    return out


class EdgeStore:
    """The shard's every call goes through one thread (it is not documented as thread-safe); updates
    are also recorded while an optimized copy is being built, to be replayed onto it."""

    def __init__(self, root: Path, dim: int, *, bm25: Bm25Encoder | None = None) -> None:
        self._qe = qe = _qe()
        self._models = filters.Models(qe.Filter, qe.FieldCondition, qe.MatchValue, qe.MatchAny, qe.RangeFloat)
        self.root = root
        self.dim = dim
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="qdrant-edge")
        self._writes = asyncio.Lock()
        #: Updates since an optimized copy was taken, or None when no copy is being built.
        self._log: list[Any] | None = None
        #: Points upserted since the last optimization (the optimizer's trigger).
        self.pending = 0
        root.mkdir(parents=True, exist_ok=True)
        _adopt_legacy_layout(root)
        self.generation = read_current(root) or "gen-0"
        try:
            self._shard = _open_shard(root / self.generation, dim, bm25 or Bm25Encoder())
        except BaseException:
            self._pool.shutdown()
            raise
        if read_current(root) != self.generation:
            write_current(root, self.generation)
        self._remove_stale_generations()
        info = self._shard.info()
        # Sparse vectors are always indexed: what is not is the dense vectors of unoptimized segments.
        self.pending = max(0, 2 * info.points_count - info.indexed_vectors_count)

    @classmethod
    async def open(cls, root: Path, dim: int, *, bm25: Bm25Encoder | None = None) -> EdgeStore:
        return await asyncio.to_thread(cls, root, dim, bm25=bm25)

    def _remove_stale_generations(self) -> None:
        """What a crash during an optimization left: copies that never became current."""
        for entry in self.root.iterdir():
            if entry.is_dir() and entry.name != self.generation and entry.name.startswith("gen-"):
                shutil.rmtree(entry, ignore_errors=True)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _update(self, *ops: Any) -> None:
        def apply() -> None:
            # One call on the shard's only thread: no search runs between these updates.
            for op in ops:
                self._shard.update(op)

        async with self._writes:
            await self._call(apply)
            if self._log is not None:
                self._log.extend(ops)

    async def upsert(self, points: list[PointIn]) -> None:
        qe = self._qe
        op = qe.UpdateOperation.upsert_points([
            qe.Point(uuid.UUID(p.id), {DENSE: p.vector, **_sparse_vectors(qe, p.sparse, p.heading)}, p.payload)
            for p in points
        ])
        await self._update(op)
        self.pending += len(points)

    def _request(self, search: Search, arm: Arm) -> Any:
        qe = self._qe
        where = filters.in_collection(self._models, search.collection)
        if isinstance(arm.vector, list):
            return qe.QueryRequest(limit=arm.limit, query=qe.Query.Nearest(arm.vector), filter=where,
                                   with_payload=arm.payload)
        query = qe.Query.Nearest(qe.SparseVector(arm.vector.indices, arm.vector.values), using=arm.vector_name)
        # IDF over the question's own collection, not the whole shard.
        return qe.QueryRequest(limit=arm.limit, query=query, filter=where, with_payload=arm.payload,
                               params=qe.SearchParams(idf=qe.IdfParams(corpus=where)))

    async def search_batch(self, searches: list[Search], *, limit: int, fusion: Fusion,
                           rerank: Rerank | None = None) -> list[list[Hit]]:
        plans = [s.plan(fusion, limit) for s in searches]
        requests = [self._request(s, arm) for s, plan in zip(searches, plans) for arm in plan]
        if not requests:
            return [[] for _ in searches]
        batch = self._qe.QueryBatchRequest(requests)

        def search() -> list[list[Hit]]:
            # On the shard's thread, search and payloads alike: no update comes between them.
            results = ([Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]
                       for points in self._shard.query_batch(batch))
            ranked = rank(searches, plans, results, fusion=fusion, limit=limit, rerank=rerank)
            ids = unfetched(plans, ranked)
            records = self._shard.retrieve([uuid.UUID(i) for i in ids], True, False) if ids else []
            return fetched(plans, ranked, {str(r.id): dict(r.payload or {}) for r in records})

        return list(await self._call(search))

    async def count(self) -> int:
        return int(await self._call(lambda: self._shard.count(self._qe.CountRequest(exact=True))))

    def _document(self, document_id: str | list[str], collections: list[str], *,
                  from_index: int | None = None) -> Any:
        return filters.of_documents(self._models, document_id, collections, from_index=from_index)

    async def count_document(self, document_id: str, collection: str, *, staged: bool = False) -> int:
        request = self._qe.CountRequest(
            exact=True, filter=self._document(document_id, [staging(collection) if staged else collection])
        )
        return int(await self._call(lambda: self._shard.count(request)))

    async def publish(
        self, document_id: str, collection: str, *, chunks: int, staged: bool, replaces: list[str]
    ) -> None:
        qe = self._qe
        both = [collection, staging(collection)]
        ops = []
        if staged:
            ops.append(qe.UpdateOperation.set_payload_by_filter(
                self._document(document_id, [staging(collection)]), {COLLECTION: collection}))
        ops.append(qe.UpdateOperation.delete_points_by_filter(self._document(document_id, both, from_index=chunks)))
        if replaces:
            ops.append(qe.UpdateOperation.delete_points_by_filter(self._document(replaces, both)))
        await self._update(*ops)

    async def delete_document(self, document_id: str, collection: str) -> int:
        where = self._document(document_id, [collection, staging(collection)])
        qe = self._qe
        op = qe.UpdateOperation.delete_points_by_filter(where)

        def delete() -> int:
            n = int(self._shard.count(qe.CountRequest(exact=True, filter=where)))
            self._shard.update(op)
            return n

        async with self._writes:
            n = int(await self._call(delete))
            if self._log is not None:
                self._log.append(op)
        return n

    # ------------------------------------------------------------ optimized generations

    async def copy_for_optimizing(self) -> Path:
        """A copy of the live shard in the next generation's folder; updates from now on are recorded.

        Updates wait while the files are copied (queries do not: they run on the shard's thread
        while the copy runs on another).
        """
        target = self.root / next_generation(self.generation)
        async with self._writes:
            await self._call(self._shard.flush)
            await asyncio.to_thread(shutil.rmtree, target, True)
            await asyncio.to_thread(shutil.copytree, self.root / self.generation, target)
            self._log = []
        return target

    async def adopt(self, target: Path) -> int:
        """Make the optimized copy at ``target`` the live shard: the updates recorded since it was
        copied are replayed onto it first. Returns how many were replayed."""
        qe = self._qe
        config = shard_config(self.dim)
        async with self._writes:
            ops, self._log = self._log or [], None

            def load() -> Any:
                shard = qe.EdgeShard.load(str(target), config)
                for op in ops:
                    shard.update(op)
                shard.flush()
                return shard

            fresh = await asyncio.to_thread(load)  # not the shard's thread: queries go on meanwhile
            old, old_generation = self._shard, self.generation

            def switch() -> None:
                write_current(self.root, target.name)
                self._shard = fresh
                old.close()

            await self._call(switch)
            self.generation = target.name
        await asyncio.to_thread(shutil.rmtree, self.root / old_generation, True)
        return len(ops)

    async def abandon(self, target: Path) -> None:
        """The optimization failed: stop recording and drop the copy."""
        async with self._writes:
            self._log = None
        await asyncio.to_thread(shutil.rmtree, target, True)

    async def info(self) -> Any:
        return await self._call(self._shard.info)

    async def aclose(self) -> None:
        def close() -> None:
            self._shard.flush()
            self._shard.close()

        await self._call(close)
        self._pool.shutdown()
