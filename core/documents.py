"""The document registry in Redis: what is indexed, from where, and in which state.

One hash per document and collection (status ``indexing`` / ``ready`` / ``failed`` /
``deleting``, file, source, pages, chunks...), a set of all of them, and a map from
source path to the document last indexed from it. The producer opens an entry; the
worker that indexes a document's last missing batch publishes it (see
:meth:`DocumentRegistry.batch_indexed`); deletes go through the workers, which own the store.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Literal, cast

import msgspec
from msgspec import Struct

from core.lua import script
from core.protocol import now_ms

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.keys import Keys

Status = Literal["indexing", "ready", "failed", "deleting"]



class Indexed(IntEnum):
    """What counting one indexed batch of a document found (the batch script's answer)."""

    #: The document was deleted meanwhile.
    DELETED = -1
    #: Batches are still missing.
    MISSING = 0
    #: This batch completed the document: its caller publishes it.
    COMPLETE = 1
    #: It was published already (a redelivered batch, staged again: publish again).
    PUBLISHED = 2


# A batch of a document is indexed: mark it in the document's bitmap (a redelivered batch
# counts once), record the totals the last batch carries, and answer what that makes of the
# document (Indexed). KEYS: record, bitmap. ARGV: seq, batches ('' if unknown), chunks.
_BATCH_INDEXED = script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return $DELETED end
redis.call('SETBIT', KEYS[2], tonumber(ARGV[1]), 1)
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'batches', ARGV[2], 'chunks', ARGV[3]) end
if redis.call('HGET', KEYS[1], 'status') == $READY then
  redis.call('DEL', KEYS[2])
  return $PUBLISHED
end
local total = redis.call('HGET', KEYS[1], 'batches')
if not total or redis.call('BITCOUNT', KEYS[2]) < tonumber(total) then return $MISSING end
return $COMPLETE
""", READY="ready", **{state.name: state for state in Indexed})


class DocumentRecord(Struct, kw_only=True):
    id: str
    collection: str
    file: str
    source: str
    title: str = ""
    status: Status = "indexing"
    pages: int = 0
    chunks: int = 0
    #: Pages without a text layer that were not OCRed.
    skipped_pages: int = 0
    ocr_pages: int = 0
    job_id: str = ""
    created_ms: int = 0
    updated_ms: int = 0
    #: Ids (same collection, same source) this version replaces once published, comma-separated.
    replaces: str = ""
    #: Indexed into the staging area (a new version) rather than in place (a forced re-index).
    staged: bool = True
    error_code: str = ""
    error: str = ""


def _member(collection: str, document_id: str) -> str:
    return f"{collection}/{document_id}"


class DocumentRegistry:
    """Every document's record, the collections' documents still indexing, and each source's last document."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._batch_indexed = redis.register_script(_BATCH_INDEXED)

    async def get(self, collection: str, document_id: str) -> DocumentRecord | None:
        raw = cast("dict[bytes, bytes]", await self._redis.hgetall(self._keys.document(collection, document_id)))
        return _decode(raw)

    async def by_source(self, collection: str, source: str) -> str | None:
        value = await self._redis.hget(self._keys.sources, _member(collection, source))
        return value.decode() if value else None

    async def start(self, record: DocumentRecord) -> None:
        """Open (or reopen, for --force) the entry of a document about to be sent: status ``indexing``."""
        now = now_ms()
        record.created_ms = record.created_ms or now
        record.updated_ms = now
        record.status = "indexing"
        key = self._keys.document(record.collection, record.id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(key, self._keys.document_batches(record.collection, record.id))
            pipe.hset(key, mapping=_encode(record))
            pipe.sadd(self._keys.documents, _member(record.collection, record.id))
            pipe.hset(self._keys.indexing(record.collection), record.id, record.file)
            await pipe.execute()

    async def update(self, collection: str, document_id: str, **fields: str | int) -> None:
        key = self._keys.document(collection, document_id)
        if await self._redis.exists(key):
            await self._redis.hset(key, mapping={**fields, "updated_ms": now_ms()})
            if fields.get("status", "indexing") != "indexing":
                await self._redis.hdel(self._keys.indexing(collection), document_id)

    async def fail(self, collection: str, document_id: str, code: str, message: str) -> None:
        await self.update(collection, document_id, status="failed", error_code=code, error=message)

    async def batch_indexed(self, collection: str, document_id: str, seq: int, batches: int | None,
                            chunks: int | None) -> Indexed:
        """Count one indexed batch of the document."""
        keys = [self._keys.document(collection, document_id), self._keys.document_batches(collection, document_id)]
        args = [seq, "" if batches is None else batches, "" if chunks is None else chunks]
        return Indexed(int(await self._batch_indexed(keys=keys, args=args)))

    async def published(self, record: DocumentRecord) -> None:
        """The document is visible in the store and what it replaced is gone: so is their record."""
        replaced = [r for r in record.replaces.split(",") if r and r != record.id]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(self._keys.document(record.collection, record.id),
                      mapping={"status": "ready", "updated_ms": now_ms(), "replaces": ""})
            pipe.delete(self._keys.document_batches(record.collection, record.id))
            pipe.hdel(self._keys.indexing(record.collection), record.id)
            pipe.hset(self._keys.sources, _member(record.collection, record.source), record.id)
            for old in replaced:
                pipe.delete(self._keys.document(record.collection, old),
                            self._keys.document_batches(record.collection, old))
                pipe.srem(self._keys.documents, _member(record.collection, old))
            await pipe.execute()

    async def forget(self, collection: str, document_id: str) -> None:
        record = await self.get(collection, document_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(self._keys.document(collection, document_id),
                        self._keys.document_batches(collection, document_id))
            pipe.srem(self._keys.documents, _member(collection, document_id))
            pipe.hdel(self._keys.indexing(collection), document_id)
            await pipe.execute()
        if record is not None and await self.by_source(collection, record.source) == document_id:
            await self._redis.hdel(self._keys.sources, _member(collection, record.source))

    async def indexing_files(self, collections: set[str]) -> dict[str, list[str]]:
        """The files of each collection still being indexed (in one round trip)."""
        names = sorted(collections)
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hvals(self._keys.indexing(name))
            replies = await pipe.execute()
        return {name: sorted(v.decode() for v in files) for name, files in zip(names, replies) if files}

    async def collections_with_documents(self) -> set[str]:
        """The collections that hold at least one document (one still indexing counts), in one round trip."""
        return {m.decode().split("/", 1)[0] for m in await self._redis.smembers(self._keys.documents)}

    async def documents(self, collection: str | None = None) -> list[DocumentRecord]:
        members = sorted(m.decode() for m in await self._redis.smembers(self._keys.documents))
        pairs = [tuple(m.split("/", 1)) for m in members]
        pairs = [p for p in pairs if len(p) == 2 and (collection is None or p[0] == collection)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for coll, doc in pairs:
                pipe.hgetall(self._keys.document(coll, doc))
            raws = await pipe.execute()
        records = [r for r in map(_decode, raws) if r is not None]
        return sorted(records, key=lambda r: (r.collection, r.created_ms, r.file))

    async def find(self, document_id: str, collection: str | None = None) -> list[DocumentRecord]:
        """The document's entries, in every collection (or in one)."""
        return [r for r in await self.documents(collection) if r.id == document_id]


def _encode(record: DocumentRecord) -> dict[str, str | int]:
    return {k: (int(v) if isinstance(v, bool) else v) for k, v in msgspec.structs.asdict(record).items()}


def _decode(raw: dict[bytes, bytes]) -> DocumentRecord | None:
    if not raw or b"id" not in raw:
        return None
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    fields.pop("batches", None)
    return msgspec.convert(fields, DocumentRecord, strict=False)
