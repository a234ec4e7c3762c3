"""Writing job event streams: the only module that spells an XADD to ``<p>:job:{id}``.

Every XADD is trimmed (MAXLEN ~) and refreshes the stream's expiry in the same
script, so an event stream can never outlive its TTL or grow without bound. Scripts
elsewhere that write an event (cancelling, in core.queue) are built on :func:`event_script`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from core.autopipeline import autopipeline
from core.keys import Keys
from core.lua import script
from core.protocol import (
    DATA_FIELD,
    TERMINAL,
    TYPE_FIELD,
    Cancelled,
    Event,
    EventKind,
    encode_event,
    read_event,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.settings import LimitSettings

# Appending one event: trimmed (MAXLEN ~) and the stream's expiry refreshed in the same step.
# Every script that writes an event starts with it.
_ADD_EVENT = """
local function add(key, kind, data, maxlen, ttl)
  local id = redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', $TYPE, kind, $DATA, data)
  redis.call('EXPIRE', key, ttl)
  return id
end
-- The kind of the stream's last event (nil when it has none): an entry's first field is its type.
local function last_kind(key)
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  return last[1] and last[1][2][2]
end
local TERMINAL = $TERMINAL
"""

# Counts chunks an ingest job has indexed and writes its progress event, and its
# done event once the producer has told the total and every chunk is in: atomic, so
# exactly one caller finishes the job and nothing lands after `done`. Answers 1 then, else 0.
# KEYS: record, events. ARGV: added chunks (0 from the producer), total ('' unless
# the producer is sealing), file, maxlen, ttl.
_INGEST_PROGRESS = """
local done = redis.call('HINCRBY', KEYS[1], 'chunks_done', tonumber(ARGV[1]))
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'chunks_total', ARGV[2]) end
local total = redis.call('HGET', KEYS[1], 'chunks_total')
local ttl = tonumber(ARGV[5])
if redis.call('HEXISTS', KEYS[1], 'finished') == 1 then return 0 end
if tonumber(ARGV[1]) > 0 then
  add(KEYS[2], $PROGRESS, cjson.encode({[$TYPE]=$PROGRESS, chunks_done=done,
    chunks_total=(total and tonumber(total)) or cjson.null, file=ARGV[3]}), ARGV[4], ttl)
end
redis.call('EXPIRE', KEYS[1], ttl)
if total and done >= tonumber(total) then
  redis.call('HSET', KEYS[1], 'finished', '1', 'status', 'done')
  add(KEYS[2], $DONE, cjson.encode({[$TYPE]=$DONE, chunks=done}), ARGV[4], ttl)
  return 1
end
return 0
"""

# One event for a job: refused (nil) when the job was cancelled, and then the job's
# `cancelled` event is written instead, once. KEYS: events, record, cancel flag.
# ARGV: maxlen, ttl, type, data, 1 to honour the cancel flag, the cancelled event's data.
_EMIT = """
local function emit(kind, data)
  local id = add(KEYS[1], kind, data, ARGV[1], tonumber(ARGV[2]))
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
  return id
end
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then
  if not TERMINAL[last_kind(KEYS[1])] then emit($CANCELLED, ARGV[6]) end
  return false
end
return emit(ARGV[3], ARGV[4])
"""

def event_script(body: str, **names: str | int) -> str:
    """A Lua script that writes events: the append function, ``last_kind`` and ``TERMINAL`` first, then
    ``body``, with the protocol's names put in (``$TYPE``, ``$DATA``, ``$PROGRESS``, ``$DONE``,
    ``$CANCELLED``) and ``names``."""
    return script(_ADD_EVENT + body, TYPE=TYPE_FIELD, DATA=DATA_FIELD, TERMINAL=TERMINAL,
                  PROGRESS=EventKind.PROGRESS, DONE=EventKind.DONE, CANCELLED=EventKind.CANCELLED, **names)


#: The data of the `cancelled` event a client's cancel writes.
CANCELLED_BY_CLIENT: Final = encode_event(Cancelled(reason="cancelled by the client"))[DATA_FIELD]


class JobCancelled(Exception):
    """The job's cancel flag is set: its worker stops and writes nothing more but `cancelled`."""


class JobWriter:
    """Writes jobs' keys through the process's auto-pipeline, within the event streams' limits."""

    def __init__(self, redis: Redis, keys: Keys, limits: LimitSettings) -> None:
        self._redis = redis
        # Events, records and job messages of concurrent jobs share round trips.
        self._pipe = autopipeline(redis)
        self._keys = keys
        #: Entries kept per event stream (MAXLEN ~), and how long a job's keys live after their last write.
        self._maxlen = limits.events_maxlen
        self._ttl = limits.events_ttl_s


class EventWriter(JobWriter):
    """Appends events to job event streams."""

    def __init__(self, redis: Redis, keys: Keys, limits: LimitSettings) -> None:
        super().__init__(redis, keys, limits)
        self._progress = redis.register_script(event_script(_INGEST_PROGRESS))
        self._emit = redis.register_script(event_script(_EMIT))

    @property
    def redis(self) -> Redis:
        """The connection events go through (the indexer's document registry shares it)."""
        return self._redis

    @property
    def keys(self) -> Keys:
        return self._keys

    async def emit(self, job_id: str, event: Event, *, unless_cancelled: bool = True) -> bytes:
        """XADD one event; returns its entry id (the SSE ``id:``).

        Raises JobCancelled (after writing the `cancelled` event) if the job was cancelled.
        """
        entry_id = await self._send(job_id, event, unless_cancelled)
        if entry_id is None:
            raise JobCancelled(job_id)
        return entry_id

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
            self._keys.job_keys(job_id),
            [self._maxlen, self._ttl, fields[TYPE_FIELD], fields[DATA_FIELD], int(unless_cancelled), CANCELLED_BY_CLIENT],
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
        return {job_id for job_id, last in zip(job_ids, replies) if last and read_event(*last[0]).terminal}

    async def mark_cancelled(self, job_id: str) -> None:
        """Write the `cancelled` event of a job whose cancel flag is set (no-op if already terminal)."""
        try:
            await self.emit(job_id, Cancelled(), unless_cancelled=True)
        except JobCancelled:
            return

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
