"""Submitting jobs: a job's record and message in one round trip, the backlog check, cancelling.

The API submits questions and cancels jobs here; ingest opens its jobs and enqueues chunk
batches and deletions here. Workers read what this module writes (workers.consumer).
"""

from __future__ import annotations

import asyncio
from enum import IntEnum
from typing import TYPE_CHECKING, Final

from core.apikeys import OWNER
from core.events import CANCELLED_BY_CLIENT, JobWriter, event_script
from core.lua import script
from core.protocol import JOB_FIELD, Job, encode_job

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.keys import Keys
    from core.settings import LimitSettings


class CancelResult(IntEnum):
    """What cancelling a job found (the cancel script's answer)."""

    UNKNOWN = -1
    FINISHED = 0
    #: A worker has it: the cancel flag is set and published, and that worker stops it.
    RUNNING = 1
    #: No worker had started it: its `cancelled` event is written already.
    NOT_STARTED = 2


#: The enqueue script's answer when the job was added (otherwise: the stream's length, over the limit).
ENQUEUED: Final = -1

# Cancelling a job: answers a CancelResult (NOT_STARTED: the `cancelled` event is written here). A job another
# API key created is UNKNOWN to the one asking. KEYS: events, record, cancel flag. ARGV: maxlen, ttl, the
# cancelled event's data, the asking key's id ('': no key to check).
_CANCEL = event_script("""
if redis.call('EXISTS', KEYS[2]) == 0 then return $UNKNOWN end
if ARGV[4] ~= '' and redis.call('HGET', KEYS[2], $OWNER) ~= ARGV[4] then return $UNKNOWN end
local kind = last_kind(KEYS[1])
if TERMINAL[kind] then return $FINISHED end
redis.call('SET', KEYS[3], '1', 'EX', tonumber(ARGV[2]))
if not kind then
  add(KEYS[1], $CANCELLED, ARGV[3], ARGV[1], tonumber(ARGV[2]))
  return $NOT_STARTED
end
return $RUNNING
""", OWNER=OWNER, **{result.name: result for result in CancelResult})

# Enqueueing a job unless the stream already holds ``max`` (0: no limit): the check and the
# XADD in one step, so a burst cannot overshoot the limit. KEYS: stream. ARGV: max, job.
# Answers ENQUEUED when added, else the stream's length.
_ENQUEUE = script("""
local n = redis.call('XLEN', KEYS[1])
if tonumber(ARGV[1]) > 0 and n >= tonumber(ARGV[1]) then return n end
redis.call('XADD', KEYS[1], '*', $JOB, ARGV[2])
return $ENQUEUED
""", JOB=JOB_FIELD, ENQUEUED=ENQUEUED)


class JobQueue(JobWriter):
    """Puts jobs on the job streams, with their records; cancels them."""

    def __init__(self, redis: Redis, keys: Keys, limits: LimitSettings) -> None:
        super().__init__(redis, keys, limits)
        self._cancel = redis.register_script(_CANCEL)
        self._enqueue = redis.register_script(_ENQUEUE)

    async def submit(self, job: Job, stream: str, record: dict[str, str | int], *,
                     max_backlog: int = 0) -> int | None:
        """Create the job's record, then enqueue it, in one round trip; the record makes the job
        id known at once. With ``max_backlog``, a stream already that long refuses the job (its
        record is deleted): returns that length; None when the job was enqueued."""
        record = {"kind": job.kind, "created_ms": job.created_ms, **record}
        futures = [self._pipe.send(*command) for command in self._record(job.id, record)]
        futures.append(self._pipe.send_script(self._enqueue, [stream], [max_backlog, encode_job(job)]))
        *_, backlog = await asyncio.gather(*futures)
        if int(backlog) == ENQUEUED:
            return None
        await self._pipe.execute_command("DEL", self._keys.record(job.id))
        return int(backlog)

    async def create_record(self, job_id: str, record: dict[str, str | int]) -> None:
        """Open a job that is not one message (an ingest run): its id is known from now on."""
        await self._pipe.many(*self._record(job_id, record))

    def _record(self, job_id: str, record: dict[str, str | int]) -> list[tuple[object, ...]]:
        key = self._keys.record(job_id)
        fields = [item for pair in record.items() for item in pair]
        return [("HSET", key, *fields), ("EXPIRE", key, self._ttl)]

    async def enqueue(self, job: Job, stream: str) -> None:
        """One more message of an open job (a chunk batch), or a job without a record of its own."""
        await self._pipe.execute_command("XADD", stream, "*", JOB_FIELD, encode_job(job))

    async def cancel(self, job_id: str, owner: str | None = None) -> CancelResult:
        """Set the job's cancel flag; a running job's worker is told at once. With ``owner``, a job that API key
        did not create is UNKNOWN."""
        result = CancelResult(int(await self._pipe.script(
            self._cancel, self._keys.job_keys(job_id), [self._maxlen, self._ttl, CANCELLED_BY_CLIENT, owner or ""])))
        if result is CancelResult.RUNNING:
            await self._redis.publish(self._keys.cancels, job_id)
        return result
