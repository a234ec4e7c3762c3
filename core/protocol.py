"""The stream protocol: job messages and job events as msgspec Structs, one encode/decode pair each.

A job stream entry has one field, ``job``: a msgpack-encoded :class:`Job`.
A job event stream entry has two fields: ``type`` (the event tag) and ``data`` (the
event as JSON, tag included), so the API relays ``data`` verbatim as SSE without
decoding it.
"""

from __future__ import annotations

import time
import uuid
from typing import Final, Literal

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


# ---------------------------------------------------------------- job events


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


class Sources(Struct, frozen=True, tag="sources", tag_field="type", kw_only=True):
    sources: list[Source]
    #: Files of the collection still being indexed: not searched until every chunk of theirs is in.
    indexing: list[str] = []


class Token(Struct, frozen=True, tag="token", tag_field="type", kw_only=True):
    text: str


class Progress(Struct, frozen=True, tag="progress", tag_field="type", kw_only=True):
    chunks_done: int
    chunks_total: int | None = None
    file: str | None = None


class DocumentEvent(Struct, frozen=True, tag="document", tag_field="type", kw_only=True):
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


class Restart(Struct, frozen=True, tag="restart", tag_field="type", kw_only=True):
    """The job was taken over by another worker: discard partial output."""

    delivery: int
    reason: str = "worker_lost"


#: The answer, word for word, when nothing retrieved answers the question (``done.found`` is false then).
NOT_FOUND_ANSWER: Final = "I found nothing on this in the documents."
#: The error code of a question to a collection that has no documents.
EMPTY_COLLECTION: Final = "empty_collection"
#: The error code of an upload whose API process stopped before it was indexed (sent again, nothing is duplicated).
UPLOAD_INTERRUPTED: Final = "upload_interrupted"


class Done(Struct, frozen=True, tag="done", tag_field="type", kw_only=True):
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


class Error(Struct, frozen=True, tag="error", tag_field="type", kw_only=True):
    code: str
    message: str


class Cancelled(Struct, frozen=True, tag="cancelled", tag_field="type", kw_only=True):
    reason: str = "cancelled"


Event = Sources | Token | Progress | DocumentEvent | Restart | Done | Error | Cancelled
EventType = Literal["sources", "token", "progress", "document", "restart", "done", "error", "cancelled"]
TERMINAL: Final = frozenset({"done", "error", "cancelled"})

_event_encoder: Final = msgspec.json.Encoder()
_event_decoder: Final = msgspec.json.Decoder(Event)


def event_type(event: Event) -> str:
    return type(event).__struct_config__.tag  # type: ignore[return-value]


def encode_event(event: Event) -> dict[str, bytes]:
    """The fields of one event stream entry."""
    return {"type": event_type(event).encode(), "data": _event_encoder.encode(event)}


def decode_event(data: bytes) -> Event:
    return _event_decoder.decode(data)
