"""The stream protocol: job messages and job events as msgspec Structs, one encode/decode pair each.

A job stream entry has one field, ``job`` (:data:`JOB_FIELD`): a msgpack-encoded :class:`Job`.
A job event stream entry has two fields: ``type`` (the event's :class:`EventKind`) and
``data`` (the event as JSON, tag included), so the API relays ``data`` verbatim as SSE
without decoding it. Nothing else spells these names: Lua scripts get them put in (core.lua).
"""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Final, Literal, NamedTuple

import msgspec
from msgspec import Struct

# ---------------------------------------------------------------- job messages


Retrieval = Literal["hybrid", "dense", "sparse", "heading"]


class Query(Struct, frozen=True, tag="query", kw_only=True):
    question: str
    top_k: int = 5
    collection: str | None = None
    #: Overrides of RAG_RETRIEVAL_MODE and of the reranker being on, for one question (the
    #: evaluation runs each arm alone on the same service).
    retrieval: Retrieval | None = None
    rerank: bool | None = None


class ChunkIn(Struct, frozen=True, kw_only=True):
    """One chunk to embed and index; ``id`` is stable for (document, position)."""

    id: str
    text: str
    page: int
    page_end: int
    index: int
    #: The deepest outline entry (or detected heading) the chunk is under.
    section: str | None = None
    #: The contextual header both arms index with the text: document title and section path.
    context: str = ""
    #: The chunk is on a table of contents, an index or a list of figures.
    nav: bool = False
    #: Its position in its section (0: the chunk the section starts with).
    part: int = 0


class Document(Struct, frozen=True, kw_only=True):
    #: The content hash (see ingest.pdf.document_id).
    id: str
    #: The file name, as cited.
    file: str
    #: Where it was read from.
    source: str
    title: str
    pages: int


class IngestBatch(Struct, frozen=True, tag="ingest", kw_only=True):
    document: Document
    chunks: list[ChunkIn]
    collection: str | None = None
    #: The batch's position in its document (0, 1, ...); None: untracked (no document registry).
    seq: int | None = None
    #: Set on a document's last batch: how many batches and chunks the document has. The
    #: worker that completes the set publishes the document (see core.documents).
    batches: int | None = None
    chunks_total: int | None = None
    #: Index into a hidden staging value of ``collection`` until the whole document is in.
    staged: bool = False


class DeleteDocument(Struct, frozen=True, tag="delete_document", kw_only=True):
    """Remove a document's points from the store (workers own the store)."""

    document_id: str
    collection: str | None = None
    #: Also drop its registry entry; False keeps a failed document's record.
    forget: bool = True
    #: Write ``done`` to the job's event stream (False for the producer's own clean-ups).
    report: bool = True


Payload = Query | IngestBatch | DeleteDocument


class Job(Struct, frozen=True, kw_only=True):
    id: str
    payload: Payload
    trace_id: str
    created_ms: int

    @property
    def kind(self) -> str:
        return "query" if isinstance(self.payload, Query) else "ingest"


def new_id() -> str:
    return uuid.uuid4().hex


def chunk_id(document_id: str, index: int) -> str:
    """Stable per (document, chunk position): re-ingesting the same file overwrites, never duplicates."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{document_id}/{index}"))


def now_ms() -> int:
    return int(time.time() * 1000)


def new_job(payload: Payload, *, job_id: str | None = None, trace_id: str | None = None) -> Job:
    return Job(
        id=job_id or new_id(),
        payload=payload,
        trace_id=trace_id or new_id(),
        created_ms=now_ms(),
    )


_job_encoder: Final = msgspec.msgpack.Encoder()
_job_decoder: Final = msgspec.msgpack.Decoder(Job)


def encode_job(job: Job) -> bytes:
    return _job_encoder.encode(job)


def decode_job(data: bytes) -> Job:
    """Raises msgspec.DecodeError / ValidationError on a malformed message."""
    return _job_decoder.decode(data)


# ---------------------------------------------------------------- stream entries

#: The one field of a job stream entry (and of a dead letter's copy of the job).
JOB_FIELD: Final = "job"
#: The two fields of an event stream entry, in this order (Lua reads an entry's type as its first value).
TYPE_FIELD: Final = "type"
DATA_FIELD: Final = "data"

_JOB_KEY: Final = JOB_FIELD.encode()
_TYPE_KEY: Final = TYPE_FIELD.encode()
_DATA_KEY: Final = DATA_FIELD.encode()


class MalformedJob(ValueError):
    """A job stream entry that holds no job this protocol can read: dead on arrival."""


def job_fields(job: Job) -> dict[str, bytes]:
    """The fields of one job stream entry."""
    return {JOB_FIELD: encode_job(job)}


def read_job(fields: dict[bytes, bytes]) -> Job:
    """The job of a job stream entry; raises MalformedJob saying what is wrong with it."""
    raw = fields.get(_JOB_KEY)
    if raw is None:
        raise MalformedJob(f"message has no {JOB_FIELD!r} field")
    try:
        return decode_job(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedJob(str(exc)) from None


class EventEntry(NamedTuple):
    """One entry of a job's event stream as read back: its entry id (the SSE ``id:``), kind and JSON."""

    id: str
    kind: str
    data: str

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL

    def event(self) -> Event:
        return decode_event(self.data)


def read_event(entry_id: bytes | str, fields: dict[bytes, bytes]) -> EventEntry:
    """The one decoder of event stream entries, as XREAD, XRANGE and XREVRANGE return them."""
    return EventEntry(entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
                      fields[_TYPE_KEY].decode(), fields[_DATA_KEY].decode())


# ---------------------------------------------------------------- dead letters


class DeadLetter(Struct, kw_only=True):
    """A job message that failed for good, as the dead-letter stream keeps it (one field per attribute)."""

    #: The job stream it came from, and its entry id there.
    stream: str
    entry_id: str
    #: Its last error: a stable code, and the message.
    code: str
    error: str
    #: How often it was delivered, and the consumer that gave up on it.
    deliveries: int
    consumer: str
    #: When it was dead-lettered (Unix ms).
    dead_ms: int
    #: The job message as it was (msgpack), and its id; absent when it could not be read.
    job: bytes | None = None
    job_id: str | None = None

    def fields(self) -> dict[str, str | bytes | int]:
        return {k: v for k, v in msgspec.structs.asdict(self).items() if v is not None}

    @classmethod
    def read(cls, fields: dict[bytes, bytes]) -> DeadLetter:
        """Tolerant of what it cannot read: a dead-letter stream is where broken things go."""
        def text(name: str) -> str:
            return fields.get(name.encode(), b"").decode(errors="replace")

        return cls(stream=text("stream"), entry_id=text("entry_id"), code=text("code"), error=text("error"),
                   deliveries=_int(fields.get(b"deliveries")), consumer=text("consumer"),
                   dead_ms=_int(fields.get(b"dead_ms")), job=fields.get(_JOB_KEY), job_id=text("job_id") or None)


def _int(raw: bytes | None) -> int:
    return int(raw) if raw and raw.isdigit() else 0


# ---------------------------------------------------------------- job events


class EventKind(StrEnum):
    """The ``type`` of an event: its stream entry's field, its SSE ``event:``, its JSON tag."""

    SOURCES = "sources"
    TOKEN = "token"
    PROGRESS = "progress"
    DOCUMENT = "document"
    RESTART = "restart"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"


#: The kinds that end a job's event stream: nothing is written after one (the Lua scripts get this set).
TERMINAL: Final = frozenset({EventKind.DONE, EventKind.ERROR, EventKind.CANCELLED})


class Source(Struct, frozen=True, kw_only=True):
    """A retrieved chunk; ``n`` is its citation number, ``[n]`` in the answer."""

    n: int
    file: str
    page: int
    page_end: int
    score: float
    snippet: str
    document_id: str
    chunk_id: str
    #: The document's title, and the outline section the chunk starts under (if the PDF has one).
    title: str | None = None
    section: str | None = None


class Usage(Struct, frozen=True, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Timings(Struct, frozen=True, kw_only=True):
    queued_ms: float = 0.0
    embed_ms: float = 0.0
    search_ms: float = 0.0
    first_token_ms: float = 0.0
    generate_ms: float = 0.0
    total_ms: float = 0.0
    #: Queries embedded in the same call as this one.
    batch_size: int = 1


class Sources(Struct, frozen=True, tag=EventKind.SOURCES.value, tag_field=TYPE_FIELD, kw_only=True):
    sources: list[Source]
    #: Files of the collection still being indexed: not searched until every chunk of theirs is in.
    indexing: list[str] = []


class Token(Struct, frozen=True, tag=EventKind.TOKEN.value, tag_field=TYPE_FIELD, kw_only=True):
    text: str


class Progress(Struct, frozen=True, tag=EventKind.PROGRESS.value, tag_field=TYPE_FIELD, kw_only=True):
    chunks_done: int
    chunks_total: int | None = None
    file: str | None = None


class DocumentEvent(Struct, frozen=True, tag=EventKind.DOCUMENT.value, tag_field=TYPE_FIELD, kw_only=True):
    """An ingest job's news about one file: ``indexing`` (parsing starts), ``sent`` (every chunk is on its
    way), ``ready`` (indexed and visible to queries), ``unchanged``, ``failed``; ``deleted`` for deletions."""

    status: str
    file: str
    document_id: str | None = None
    pages: int = 0
    chunks: int = 0
    #: Pages without a text layer that could not be OCRed (no Tesseract): reported, never silently empty.
    skipped_pages: list[int] = []
    code: str | None = None
    message: str | None = None


class Restart(Struct, frozen=True, tag=EventKind.RESTART.value, tag_field=TYPE_FIELD, kw_only=True):
    """The job was taken over by another worker: discard partial output."""

    delivery: int
    reason: str = "worker_lost"


#: The answer, word for word, when nothing retrieved answers the question (``done.found`` is false then).
NOT_FOUND_ANSWER: Final = "I found nothing on this in the documents."
#: The error code of a question to a collection that has no documents.
EMPTY_COLLECTION: Final = "empty_collection"
#: The error code of an upload whose API process stopped before it was indexed (sent again, nothing is duplicated).
UPLOAD_INTERRUPTED: Final = "upload_interrupted"


class Done(Struct, frozen=True, tag=EventKind.DONE.value, tag_field=TYPE_FIELD, kw_only=True):
    answer: str = ""
    #: The sources the answer cites as [n]; for an answer that cites none, those whose sentences support it.
    citations: list[Source] = []
    usage: Usage = Usage()
    timings: Timings = Timings()
    chunks: int = 0
    #: False when nothing retrieved answers the question: the answer is NOT_FOUND_ANSWER.
    found: bool = True
    #: False when the answer cites nothing and no source supports it sentence by sentence.
    supported: bool = True


class Error(Struct, frozen=True, tag=EventKind.ERROR.value, tag_field=TYPE_FIELD, kw_only=True):
    code: str
    message: str


class Cancelled(Struct, frozen=True, tag=EventKind.CANCELLED.value, tag_field=TYPE_FIELD, kw_only=True):
    reason: str = "cancelled"


Event = Sources | Token | Progress | DocumentEvent | Restart | Done | Error | Cancelled

_event_encoder: Final = msgspec.json.Encoder()
_event_decoder: Final = msgspec.json.Decoder(Event)


def event_type(event: Event) -> str:
    return type(event).__struct_config__.tag  # type: ignore[return-value]


def encode_event(event: Event) -> dict[str, bytes]:
    """The fields of one event stream entry."""
    return {TYPE_FIELD: event_type(event).encode(), DATA_FIELD: _event_encoder.encode(event)}


def decode_event(data: bytes | str) -> Event:
    return _event_decoder.decode(data)
