"""Writing job event streams and job records: the only module that XADDs to ``<p>:job:{id}``.

Every XADD is trimmed (MAXLEN ~) and refreshes the stream's expiry in the same
script, so an event stream can never outlive its TTL or grow without bound.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from core.autopipeline import autopipeline
from core.keys import Keys
from core.protocol import TERMINAL, Cancelled, Event, Job, encode_event, encode_job

if TYPE_CHECKING:
    from redis.asyncio import Redis

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


# One event for a job: refused (nil) when the job was cancelled, and then the job's
# `cancelled` event is written instead, once. KEYS: events, record, cancel flag.
# ARGV: maxlen, ttl, type, data, 1 to honour the cancel flag, the cancelled event's data.
_EMIT = """
local function add(kind, data)
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', kind, 'data', data)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
  return id
end
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  local kind = last[1] and last[1][2][2]
  if kind ~= 'done' and kind ~= 'error' and kind ~= 'cancelled' then add('cancelled', ARGV[6]) end
  return false
end
return add(ARGV[3], ARGV[4])
"""

# Cancelling a job: -1 unknown, 0 already finished, 2 cancelled before any worker
# started it (the `cancelled` event is written here), 1 running (its worker stops it).
# KEYS: events, record, cancel flag. ARGV: maxlen, ttl, the cancelled event's data.
_CANCEL = """
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local kind = last[1] and last[1][2][2]
if kind == 'done' or kind == 'error' or kind == 'cancelled' then return 0 end
redis.call('SET', KEYS[3], '1', 'EX', tonumber(ARGV[2]))
if not kind then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', 'cancelled', 'data', ARGV[3])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 2
end
return 1
"""

# Enqueueing a job unless the stream already holds ``max`` (0: no limit): the check and the
# XADD in one step, so a burst cannot overshoot the limit. KEYS: stream. ARGV: max, job.
# Returns -1 when added, else the stream's length.
_ENQUEUE = """
local n = redis.call('XLEN', KEYS[1])
if tonumber(ARGV[1]) > 0 and n >= tonumber(ARGV[1]) then return n end
redis.call('XADD', KEYS[1], '*', 'job', ARGV[2])
return -1
"""

_CANCELLED = encode_event(Cancelled(reason="cancelled by the client"))["data"]


class JobCancelled(Exception):
    """The job's cancel flag is set: its worker stops and writes nothing more but `cancelled`."""


class EventWriter:
    """Appends events to job event streams and creates job records."""

    def __init__(self, redis: Redis, keys: Keys, limits: LimitSettings) -> None:
        self._redis = redis
        # Events, records and job messages of concurrent jobs share round trips.
        self._pipe = autopipeline(redis)
        self._keys = keys
        self._maxlen = limits.events_maxlen
        self._ttl = limits.events_ttl_s
        self._progress = redis.register_script(_INGEST_PROGRESS)
        self._emit = redis.register_script(_EMIT)
        self._cancel = redis.register_script(_CANCEL)
        self._enqueue = redis.register_script(_ENQUEUE)

    @property
    def redis(self) -> Redis:
        """The connection events go through (the indexer's document registry shares it)."""
        return self._redis

    @property
    def keys(self) -> Keys:
        return self._keys

    def _job_keys(self, job_id: str) -> list[str]:
        return [self._keys.events(job_id), self._keys.record(job_id), self._keys.cancel(job_id)]

    async def emit(self, job_id: str, event: Event, *, unless_cancelled: bool = True) -> bytes:
        """XADD one event; returns its entry id (the SSE ``id:``).

        Raises JobCancelled (after writing the `cancelled` event) if the job was cancelled.
        """
        entry_id = await self._send(job_id, event, unless_cancelled)
        if entry_id is None:
            raise JobCancelled(job_id)
        return entry_id  # type: ignore[no-any-return]

    def job(self, job_id: str) -> JobEvents:
        """A writer for one job's events that does not wait for each reply (see JobEvents)."""
        return JobEvents(self, job_id)

    async def emit_each(self, events: list[tuple[str, Event]]) -> list[bytes | None]:
        """One event for each of many jobs, in one round trip; None where the job was cancelled."""
        return list(await asyncio.gather(*(self._send(job_id, event, True) for job_id, event in events)))

    def _send(self, job_id: str, event: Event, unless_cancelled: bool) -> asyncio.Future[bytes | None]:
        fields = encode_event(event)
        return self._pipe.send_script(
            self._emit,
            self._job_keys(job_id),
            [self._maxlen, self._ttl, fields["type"], fields["data"], int(unless_cancelled), _CANCELLED],
        )

    async def last_event_ms(self, job_id: str) -> int | None:
        """When the job's latest event was written (Redis server time, from its entry id)."""
        last = await self._redis.xrevrange(self._keys.events(job_id), count=1)
        if not last:
            return None
        entry_id = last[0][0]
        return int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")[0])

    async def finished(self, job_ids: list[str]) -> set[str]:
        """Those of the jobs whose latest event is terminal (in one round trip)."""
        if not job_ids:
            return set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.xrevrange(self._keys.events(job_id), count=1)
            replies = await pipe.execute()
        return {job_id for job_id, last in zip(job_ids, replies)
                if last and last[0][1].get(b"type", b"").decode() in TERMINAL}

    async def mark_cancelled(self, job_id: str) -> None:
        """Write the `cancelled` event of a job whose cancel flag is set (no-op if already terminal)."""
        try:
            await self.emit(job_id, Cancelled(), unless_cancelled=True)
        except JobCancelled:
            return

    async def cancel(self, job_id: str) -> int:
        """Set the job's cancel flag: -1 unknown, 0 finished already, 1 running, 2 cancelled before it started."""
        result = await self._pipe.script(self._cancel, self._job_keys(job_id), [self._maxlen, self._ttl, _CANCELLED])
        if int(result) == 1:
            await self._redis.publish(self._keys.cancels, job_id)
        return int(result)

    async def submit(self, job: Job, stream: str, record: dict[str, str | int], *,
                     max_backlog: int = 0) -> int | None:
        """Create the job's record, then enqueue it, in one round trip; the record makes the job
        id known at once. With ``max_backlog``, a stream already that long refuses the job (its
        record is deleted): returns that length; None when the job was enqueued."""
        record = {"kind": job.kind, "created_ms": job.created_ms, **record}
        futures = [self._pipe.send(*command) for command in self._record(job.id, record)]
        futures.append(self._pipe.send_script(self._enqueue, [stream], [max_backlog, encode_job(job)]))
        *_, backlog = await asyncio.gather(*futures)
        if int(backlog) < 0:
            return None
        await self._pipe.execute_command("DEL", self._keys.record(job.id))
        return int(backlog)

    async def create_record(self, job_id: str, record: dict[str, str | int]) -> None:
        await self._pipe.many(*self._record(job_id, record))

    def _record(self, job_id: str, record: dict[str, str | int]) -> list[tuple[object, ...]]:
        key = self._keys.record(job_id)
        fields = [item for pair in record.items() for item in pair]
        return [("HSET", key, *fields), ("EXPIRE", key, self._ttl)]

    async def enqueue(self, job: Job, stream: str) -> None:
        await self._pipe.execute_command("XADD", stream, "*", "job", encode_job(job))

    async def ingest_progress(self, job_id: str, chunks: int, file: str) -> bool:
        """Count ``chunks`` as indexed; True when this call finished the job."""
        return bool(await self._run_progress(job_id, chunks, "", file))

    async def ingest_sealed(self, job_id: str, total: int) -> bool:
        """The producer has sent all ``total`` chunks; True if they were all indexed already."""
        return bool(await self._run_progress(job_id, 0, str(total), ""))

    async def _run_progress(self, job_id: str, chunks: int, total: str, file: str) -> int:
        keys = [self._keys.record(job_id), self._keys.events(job_id)]
        return int(await self._pipe.script(self._progress, keys, [chunks, total, file, self._maxlen, self._ttl]))


class JobEvents:
    """One job's events, written in order without waiting for each reply before going on.

    ``emit`` sends its event, then waits for the reply to the previous one: the next LLM
    token is read while this one is on its way, and the last token and ``done`` share a
    round trip. At most two writes are in flight, so a cancelled job stops within a token.
    Raises JobCancelled (its `cancelled` event written) once a reply says the job was cancelled.
    """

    __slots__ = ("_job_id", "_pending", "_writer")

    def __init__(self, writer: EventWriter, job_id: str) -> None:
        self._writer = writer
        self._job_id = job_id
        self._pending: asyncio.Future[bytes | None] | None = None

    async def emit(self, event: Event) -> None:
        previous, self._pending = self._pending, self._writer._send(self._job_id, event, True)
        await self._check(previous)

    async def settle(self) -> None:
        """Wait until every event emitted so far is written."""
        pending, self._pending = self._pending, None
        await self._check(pending)

    async def _check(self, reply: asyncio.Future[bytes | None] | None) -> None:
        if reply is None:
            return
        try:
            written = await reply
        except BaseException:
            self._forget()
            raise
        if written is None:
            self._forget()
            raise JobCancelled(self._job_id)

    def _forget(self) -> None:
        """Whatever became of the write still in flight, nobody will ask: not an unretrieved error."""
        if self._pending is not None:
            self._pending.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._pending = None
