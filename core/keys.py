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
    __slots__ = ("prefix", "queries", "ingest", "dead", "metrics", "workers")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        tag = "{" + prefix + "}"
        self.queries = f"{tag}:queries"
        self.ingest = f"{tag}:ingest"
        self.dead = f"{tag}:dead"
        self.metrics = f"{tag}:metrics"
        self.workers = f"{tag}:workers"

    def events(self, job_id: str) -> str:
        """The job's event stream."""
        return f"{self.prefix}:job:{{{job_id}}}"

    def record(self, job_id: str) -> str:
        """The job's hash: kind, request, counters; proves the job exists."""
        return f"{self.prefix}:job:{{{job_id}}}:record"


def valid_job_id(job_id: str) -> bool:
    return bool(_JOB_ID.fullmatch(job_id))
