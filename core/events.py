"""Writing job event streams and job records: the only module that XADDs to ``<p>:job:{id}``.

Every XADD is trimmed (MAXLEN ~) and refreshes the stream's expiry in the same
MULTI/EXEC, so an event stream can never outlive its TTL or grow without bound.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.keys import Keys
from core.protocol import Event, Job, encode_event, encode_job

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    from core.settings import LimitSettings

# Counts chunks an ingest job has indexed and writes its progress event, and its
# done event once the producer has told the total and every chunk is in: atomic, so
# exactly one caller finishes the job and nothing lands after `done`.
# KEYS: record, events. ARGV: added chunks (0 from the producer), total ('' unless
# the producer is sealing), file, maxlen, ttl.
_INGEST_PROGRESS = """
local done = redis.call('HINCRBY', KEYS[1], 'chunks_done', tonumber(ARGV[1]))
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'chunks_total', ARGV[2]) end
local total = redis.call('HGET', KEYS[1], 'chunks_total')
local ttl = tonumber(ARGV[5])
local function emit(kind, data)
  local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'type', kind, 'data', data)
  redis.call('EXPIRE', KEYS[2], ttl)
  return id
end
if redis.call('HEXISTS', KEYS[1], 'finished') == 1 then return 0 end
if tonumber(ARGV[1]) > 0 then
  emit('progress', cjson.encode({type='progress', chunks_done=done,
    chunks_total=(total and tonumber(total)) or cjson.null, file=ARGV[3]}))
end
redis.call('EXPIRE', KEYS[1], ttl)
if total and done >= tonumber(total) then
  redis.call('HSET', KEYS[1], 'finished', '1', 'status', 'done')
  emit('done', cjson.encode({type='done', chunks=done}))
  return 1
end
return 0
"""


class EventWriter:
    """Appends events to job event streams and creates job records."""

    def __init__(self, redis: Redis, keys: Keys, limits: LimitSettings) -> None:
        self._redis = redis
        self._keys = keys
        self._maxlen = limits.events_maxlen
        self._ttl = limits.events_ttl_s
        self._progress = redis.register_script(_INGEST_PROGRESS)

    async def emit(self, job_id: str, event: Event) -> bytes:
        """XADD one event; returns its entry id (the SSE ``id:``)."""
        key = self._keys.events(job_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, encode_event(event), maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
            pipe.expire(key, self._ttl)
            pipe.expire(self._keys.record(job_id), self._ttl)
            entry_id, *_ = await pipe.execute()
        return entry_id  # type: ignore[no-any-return]

    async def submit(self, job: Job, stream: str, record: dict[str, str | int]) -> None:
        """Create the job's record, then enqueue it; the record makes the job id known at once."""
        async with self._redis.pipeline(transaction=False) as pipe:
            self._record(pipe, job.id, {"kind": job.kind, "created_ms": job.created_ms, **record})
            pipe.xadd(stream, {"job": encode_job(job)})
            await pipe.execute()

    async def create_record(self, job_id: str, record: dict[str, str | int]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            self._record(pipe, job_id, record)
            await pipe.execute()

    def _record(self, pipe: Pipeline, job_id: str, record: dict[str, str | int]) -> None:
        pipe.hset(self._keys.record(job_id), mapping=record)  # type: ignore[arg-type]
        pipe.expire(self._keys.record(job_id), self._ttl)

    async def enqueue(self, job: Job, stream: str) -> None:
        await self._redis.xadd(stream, {"job": encode_job(job)})

    async def ingest_progress(self, job_id: str, chunks: int, file: str) -> bool:
        """Count ``chunks`` as indexed; True when this call finished the job."""
        return bool(await self._run_progress(job_id, chunks, "", file))

    async def ingest_sealed(self, job_id: str, total: int) -> bool:
        """The producer has sent all ``total`` chunks; True if they were all indexed already."""
        return bool(await self._run_progress(job_id, 0, str(total), ""))

    async def _run_progress(self, job_id: str, chunks: int, total: str, file: str) -> int:
        keys = [self._keys.record(job_id), self._keys.events(job_id)]
        return int(await self._progress(keys=keys, args=[chunks, total, file, self._maxlen, self._ttl]))
