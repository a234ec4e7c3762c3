"""Administering indexed documents, for the CLI and the API alike: list, find, resolve, delete.

The records live in Redis (core.documents); deleting a document's points is a job the
workers run, as they own the store.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING

from core.apikeys import OWNER
from core.documents import DocumentRecord, DocumentRegistry
from core.hub import HubClosed, own_hub
from core.keys import Keys
from core.payload import DEFAULT_COLLECTION
from core.protocol import DeleteDocument, Done, new_job
from core.queue import JobQueue
from ingest.errors import IngestError
from ingest.pdf import document_id

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.settings import Settings


class Documents:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._keys = Keys(settings.redis.prefix)
        self.registry = DocumentRegistry(redis, self._keys)
        self._queue = JobQueue(redis, self._keys, settings.limits)

    async def all(self, collection: str | None = None) -> list[DocumentRecord]:
        """Every document (of ``collection``, or of all), by collection, then oldest first."""
        return await self.registry.documents(collection)

    async def find(self, document_id: str, collection: str | None = None) -> list[DocumentRecord]:
        """The document's records, in every collection that holds it (or in one)."""
        return await self.registry.find(document_id, collection)

    async def resolve(self, id_or_path: str, collection: str | None = None) -> str | None:
        """A document id from an id, or from a path: the source it was indexed from, else its content hash."""
        collection = collection or DEFAULT_COLLECTION
        if await self.registry.get(collection, id_or_path) is not None:
            return id_or_path
        path = Path(id_or_path)
        found = await self.registry.by_source(collection, str(path.resolve()))
        if found:
            return found
        if path.is_file():
            return await asyncio.to_thread(document_id, path)
        return None

    async def request_delete(self, document_id: str, collection: str | None = None, *,
                             owner: str | None = None) -> str | None:
        """Mark the document ``deleting`` and enqueue its deletion; the job id (None if unknown). ``owner``: the
        API key the job belongs to (only it sees the job)."""
        collection = collection or DEFAULT_COLLECTION
        if await self.registry.get(collection, document_id) is None:
            return None
        job = new_job(DeleteDocument(document_id=document_id, collection=collection))
        await self.registry.update(collection, document_id, status="deleting")
        record: dict[str, str | int] = {"document_id": document_id, "collection": collection}
        if owner is not None:
            record[OWNER] = owner
        await self._queue.submit(job, self._keys.ingest, record)
        return job.id

    async def delete(self, document_id: str, collection: str | None = None, *, timeout_s: float = 60.0) -> int | None:
        """Delete a document through the workers and wait for it; the number of points removed.

        None when the registry does not know it (in this collection).
        """
        job_id = await self.request_delete(document_id, collection)
        if job_id is None:
            return None
        try:
            async with own_hub(self._redis) as hub, aclosing(hub.follow(self._keys.events(job_id))) as entries:
                async with asyncio.timeout(timeout_s):
                    async for entry in entries:
                        event = entry.event()
                        if isinstance(event, Done):
                            return event.chunks
                        if entry.terminal:
                            raise IngestError(f"deleting document {document_id} failed: "
                                              f"{getattr(event, 'message', entry.kind)}", code="delete_failed")
        except TimeoutError:
            raise TimeoutError(f"no worker deleted document {document_id} within {timeout_s:.0f} s") from None
        raise HubClosed(f"stopped waiting for the deletion of document {document_id}")
