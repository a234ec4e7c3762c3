"""Every Redis key name the service uses, and nothing else spells one.

The prefix is hash-tagged on the shared job streams (``{rag}:queries``) so one
XREADGROUP over queries and ingest stays in one Redis Cluster slot, while per-job
keys hash-tag on the job id (``rag:job:{<id>}``) so jobs spread across slots.
"""

from __future__ import annotations

import re

GROUP = "workers"

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Keys:
    __slots__ = ("api_keys", "cancels", "dead", "documents", "events_secret", "ingest", "metrics", "prefix", "queries",
                 "sources", "uploads", "workers")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        tag = "{" + prefix + "}"
        self.queries = f"{tag}:queries"
        self.ingest = f"{tag}:ingest"
        self.dead = f"{tag}:dead"
        self.metrics = f"{tag}:metrics"
        self.workers = f"{tag}:workers"
        #: Set of every registered document, as ``<collection>/<document id>``.
        self.documents = f"{tag}:documents"
        #: Hash ``<collection>/<source path>`` -> the id of the document last indexed from it.
        self.sources = f"{tag}:sources"
        #: Pub/sub channel: job ids whose generation must stop now.
        self.cancels = f"{tag}:cancels"
        #: Hash ingest job id -> ``<collection>|<holder>`` of uploads an API process is reading and sending
        #: (core.holders): a restarted API fails those whose process is gone.
        self.uploads = f"{tag}:uploads"
        #: Set of every API key's id (core.apikeys); empty or absent: no key exists.
        self.api_keys = f"{tag}:apikeys"
        #: The secret every API process signs and checks per-job events tokens with (app.tokens).
        self.events_secret = f"{tag}:secret:events"

    def events(self, job_id: str) -> str:
        """The job's event stream."""
        return f"{self.prefix}:job:{{{job_id}}}"

    def cancel(self, job_id: str) -> str:
        """Set when the job is cancelled; every worker write checks it."""
        return f"{self.prefix}:job:{{{job_id}}}:cancel"

    def record(self, job_id: str) -> str:
        """The job's hash: kind, request, counters; proves the job exists."""
        return f"{self.prefix}:job:{{{job_id}}}:record"

    def api_key(self, key_id: str) -> str:
        """An API key's hash: its name, the SHA-256 of its secret, its scope and limits. Hash-tagged like the
        set of ids and its bucket: the lookup script touches all three in one slot."""
        return f"{{{self.prefix}}}:apikey:{key_id}"

    def api_key_bucket(self, key_id: str) -> str:
        """An API key's token bucket (its requests per second): tokens left and when they were counted."""
        return f"{{{self.prefix}}}:apikey:{key_id}:bucket"

    def job_keys(self, job_id: str) -> list[str]:
        """The job's event stream, record and cancel flag: the keys of every script that writes its events."""
        return [self.events(job_id), self.record(job_id), self.cancel(job_id)]

    def document(self, collection: str, document_id: str) -> str:
        """A document's registry hash: status, file, source, pages, chunks..."""
        return f"{self.prefix}:doc:{{{collection}/{document_id}}}"

    def indexing(self, collection: str) -> str:
        """Hash document id -> file of the collection's documents being indexed (not yet searchable)."""
        return f"{self.prefix}:indexing:{{{collection}}}"

    def lease(self, consumer: str) -> str:
        """A consumer name's lease: held by one live worker process (workers.leases)."""
        return f"{self.workers}:lease:{consumer}"

    def document_batches(self, collection: str, document_id: str) -> str:
        """Bitmap of the document's batches indexed so far (bit = batch position): redeliveries count once."""
        return f"{self.prefix}:doc:{{{collection}/{document_id}}}:batches"


def stream_label(key: str) -> str:
    """A shared stream's key as the metrics label it: ``queries``, ``ingest`` (what follows the tag)."""
    return key.rsplit(":", 1)[-1]


def valid_job_id(job_id: str) -> bool:
    return bool(_JOB_ID.fullmatch(job_id))
