import json

import msgspec
import pytest

from core.keys import Keys, valid_job_id
from core.lua import script
from core.protocol import (
    TERMINAL,
    Cancelled,
    ChunkIn,
    DeadLetter,
    Document,
    Done,
    Error,
    EventKind,
    IngestBatch,
    MalformedJob,
    Progress,
    Query,
    Restart,
    Source,
    Sources,
    Timings,
    Token,
    Usage,
    chunk_id,
    decode_event,
    decode_job,
    encode_event,
    encode_job,
    job_fields,
    new_job,
    read_event,
    read_job,
)
from core.queue import CancelResult

SOURCE = Source(n=1, file="a.pdf", page=2, page_end=3, score=0.91, snippet="text", document_id="doc", chunk_id="c1")


def test_query_job_roundtrip():
    job = new_job(Query(question="What is RAG?", top_k=3, collection="docs"), job_id="j1", trace_id="t1")
    decoded = decode_job(encode_job(job))
    assert decoded == job
    assert decoded.kind == "query"
    assert decoded.payload.question == "What is RAG?" and decoded.payload.top_k == 3


def test_ingest_job_roundtrip():
    doc = Document(id="h", file="a.pdf", source="/x/a.pdf", title="A", pages=2)
    chunks = [ChunkIn(id=chunk_id("h", i), text=f"t{i}", page=1, page_end=2, index=i) for i in range(2)]
    job = new_job(IngestBatch(document=doc, chunks=chunks))
    decoded = decode_job(encode_job(job))
    assert decoded == job
    assert decoded.kind == "ingest"
    assert decoded.payload.chunks[1].text == "t1"
    assert job.id != job.trace_id and len(job.id) == 32


@pytest.mark.parametrize("data", [b"", b"\xc1garbage", b"\x93\x01\x02\x03", msgspec.msgpack.encode({"id": "x"})])
def test_decode_job_rejects_garbage(data):
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_job(data)


def test_encode_event_fields():
    fields = encode_event(Token(text="hi"))
    assert fields["type"] == b"token"
    assert json.loads(fields["data"]) == {"type": "token", "text": "hi"}


@pytest.mark.parametrize(
    "event",
    [
        Sources(sources=[SOURCE]),
        Token(text="hello"),
        Progress(chunks_done=3, chunks_total=10, file="a.pdf"),
        Restart(delivery=2),
        Done(
            answer="x [1]",
            citations=[SOURCE],
            usage=Usage(prompt_tokens=5, completion_tokens=2),
            timings=Timings(total_ms=12.5, batch_size=4),
            chunks=0,
        ),
        Error(code="bad", message="nope"),
        Cancelled(),
    ],
)
def test_event_roundtrip(event):
    fields = encode_event(event)
    assert json.loads(fields["data"])["type"] == fields["type"].decode()
    assert decode_event(fields["data"]) == event


def test_chunk_id_is_stable_and_positional():
    assert chunk_id("doc", 0) == chunk_id("doc", 0)
    assert chunk_id("doc", 0) != chunk_id("doc", 1)
    assert chunk_id("doc", 0) != chunk_id("other", 0)
    assert len(chunk_id("doc", 0)) == 36  # a UUID string


def test_keys_names():
    k = Keys("rag")
    assert (k.queries, k.ingest, k.dead) == ("{rag}:queries", "{rag}:ingest", "{rag}:dead")
    assert (k.metrics, k.workers) == ("{rag}:metrics", "{rag}:workers")
    assert k.events("abc") == "rag:job:{abc}"
    assert k.record("abc") == "rag:job:{abc}:record"
    assert Keys("t1").queries == "{t1}:queries"


@pytest.mark.parametrize(
    "job_id, ok",
    [
        ("abc", True),
        ("a_B-9", True),
        ("x" * 64, True),
        ("", False),
        ("x" * 65, False),
        ("a b", False),
        ("a:b", False),
        ("{a}", False),
        ("abc\n", False),
    ],
)
def test_valid_job_id(job_id, ok):
    assert valid_job_id(job_id) is ok


def test_a_job_entry_reads_back_or_says_what_is_wrong():
    job = new_job(Query(question="q"))
    assert read_job({k.encode(): v for k, v in job_fields(job).items()}) == job
    with pytest.raises(MalformedJob, match="no 'job' field"):
        read_job({b"other": b"x"})
    with pytest.raises(MalformedJob):
        read_job({b"job": b"\xc1garbage"})


def test_an_event_entry_reads_back_with_its_kind():
    fields = {k.encode(): v for k, v in encode_event(Error(code="x", message="y")).items()}
    entry = read_event(b"1-2", fields)
    assert (entry.id, entry.kind, entry.terminal) == ("1-2", EventKind.ERROR, True)
    assert entry.event() == Error(code="x", message="y")
    assert not read_event("1-3", {k.encode(): v for k, v in encode_event(Token(text="t")).items()}).terminal


def test_a_dead_letter_reads_back_and_tolerates_what_it_cannot_read():
    letter = DeadLetter(stream="s", entry_id="1-0", code="c", error="e", deliveries=3, consumer="h-0", dead_ms=5,
                        job=b"raw", job_id="j")
    assert DeadLetter.read({k.encode(): v if isinstance(v, bytes) else str(v).encode()
                            for k, v in letter.fields().items()}) == letter
    assert DeadLetter.read({b"code": b"c", b"deliveries": b"lots"}) == DeadLetter(
        stream="", entry_id="", code="c", error="", deliveries=0, consumer="", dead_ms=0)


def test_lua_scripts_get_the_protocols_names():
    assert script("return $S, $N, $T", S="it's", N=CancelResult.NOT_STARTED, T=TERMINAL) == (
        "return 'it\\'s', 2, {['cancelled']=true, ['done']=true, ['error']=true}")
    with pytest.raises(KeyError):
        script("return $MISSING")
