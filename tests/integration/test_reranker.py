"""The rerank client and the worker's reranking, against tests/fake_rerank.py on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from redis.asyncio import Redis

from core.errors import Unavailable
from core.keys import Keys
from core.protocol import Query, new_job
from core.queue import JobQueue
from core.redis import connect
from core.settings import RerankerSettings, Settings
from ingest.producer import Producer
from tests.conftest import make_settings
from tests.fake_rerank import RerankRecorder, create_fake_rerank, relevance
from tests.pdfs import FACTS, write_pdf
from tests.servers import ThreadedUvicorn
from tests.workers_inproc import running_worker
from workers.reranker import HttpReranker


class FakeRerank(NamedTuple):
    url: str
    recorder: RerankRecorder


@pytest.fixture
def fake_rerank() -> Iterator[FakeRerank]:
    """The fake rerank server on a free port: its base URL and its recorder."""
    recorder = RerankRecorder()
    with ThreadedUvicorn(create_fake_rerank(recorder)) as server:
        try:
            yield FakeRerank(server.url, recorder)
        finally:
            recorder.release()  # no stalled request holds the server's shutdown


def _client(fake: FakeRerank, backend: str, **overrides: Any) -> HttpReranker:
    return HttpReranker(RerankerSettings(backend=backend, base_url=fake.url, **overrides))  # type: ignore[arg-type]


QUESTIONS = ["Which turbine makes tidal electricity?", "kelp forests store sugars"]
CANDIDATES = [
    ["Seville oranges make marmalade", "Tidal electricity from the Zephyr turbine", "A turbine hall"],
    ["Kelp forests", "Pascal compilers", "kelp forests store sugars from sunlight", "forests of oaks"],
]


def _expected(questions: list[str], candidates: list[list[str]]) -> list[list[float]]:
    return [[relevance(q, t, i, len(texts)) for i, t in enumerate(texts)] for q, texts in zip(questions, candidates)]


# --- the client against the server -------------------------------------------------------------

@pytest.mark.parametrize("backend", ["cohere", "tei"])
async def test_scores_align_to_the_input_order_in_both_shapes(fake_rerank: FakeRerank, backend: str) -> None:
    fake_rerank.recorder.api_key = "s3cret"
    client = _client(fake_rerank, backend, api_key="s3cret", model="rerank-v3.5")
    try:
        scores = await client.rerank_batch(QUESTIONS, CANDIDATES)
        assert await client.rerank_batch([], []) == []
        assert await client.rerank_batch(["no candidates"], [[]]) == [[]]  # no request for it
    finally:
        await client.aclose()
    assert scores == _expected(QUESTIONS, CANDIDATES)
    requests = fake_rerank.recorder.requests
    assert len(requests) == 2 and sorted(fake_rerank.recorder.queries) == sorted(QUESTIONS)
    for request in requests:
        assert request.path == "/rerank" and request.status == 200
        assert request.headers["authorization"] == "Bearer s3cret"
        texts = CANDIDATES[QUESTIONS.index(request.body["query"])]
        if backend == "cohere":
            assert {k: request.body.get(k) for k in ("model", "documents", "top_n", "texts")} == {
                "model": "rerank-v3.5", "documents": texts, "top_n": len(texts), "texts": None}
            results = request.reply["results"]
        else:
            assert {k: request.body.get(k) for k in ("texts", "documents")} == {"texts": texts, "documents": None}
            results = request.reply
        # The server answered best first, not in the input order: the client put them back.
        assert [r["index"] for r in results] != list(range(len(texts)))
    # The best candidate of each question is the one a reader would pick.
    assert [row.index(max(row)) for row in scores] == [1, 2]


async def test_fake_server_sorts_and_cuts_to_top_n(fake_rerank: FakeRerank) -> None:
    async with httpx.AsyncClient(base_url=fake_rerank.url) as http:
        reply = (await http.post("/rerank", json={"model": "m", "query": QUESTIONS[1], "documents": CANDIDATES[1],
                                                  "top_n": 2})).json()
    assert [r["index"] for r in reply["results"]] == [2, 0]


@pytest.mark.parametrize("backend", ["cohere", "tei"])
async def test_unknown_and_missing_indexes(fake_rerank: FakeRerank, backend: str) -> None:
    key = "relevance_score" if backend == "cohere" else "score"
    recorder = fake_rerank.recorder
    recorder.omit = {1}  # no score for candidate 1
    # Indexes past the end and negative ones are ignored; a result without a score changes nothing.
    recorder.extra = [{"index": 7, key: 9.0}, {"index": -1, key: 9.0}, {"index": 0}]
    client = _client(fake_rerank, backend)
    try:
        [scores] = await client.rerank_batch([QUESTIONS[1]], [CANDIDATES[1]])
    finally:
        await client.aclose()
    [expected] = _expected([QUESTIONS[1]], [CANDIDATES[1]])
    assert scores == [expected[0], float("-inf"), expected[2], expected[3]]


async def test_tei_long_candidates_are_truncated_not_refused(fake_rerank: FakeRerank) -> None:
    # MAX_CHARS (2,000) of a candidate and a long question (up to 2,000 characters) pass 512 tokens.
    fake_rerank.recorder.tei_max_words = 512
    question = "which of these " * 100
    client = _client(fake_rerank, "tei")
    try:
        [scores] = await client.rerank_batch([question], [["word " * 400, "a short candidate"]])
    finally:
        await client.aclose()
    assert len(scores) == 2 and float("-inf") not in scores


async def test_wrong_key_is_unavailable(fake_rerank: FakeRerank) -> None:
    fake_rerank.recorder.api_key = "right"
    client = _client(fake_rerank, "cohere", api_key="wrong")
    try:
        with pytest.raises(Unavailable) as caught:
            await client.rerank(QUESTIONS[0], CANDIDATES[0])
    finally:
        await client.aclose()
    assert caught.value.code == "reranker_unavailable" and "401" in caught.value.message
    assert {r.status for r in fake_rerank.recorder.requests} == {401}


@pytest.mark.parametrize("mode", ["error", "stall", "not_json"])
async def test_failures_raise_unavailable_within_the_timeout(fake_rerank: FakeRerank, mode: str) -> None:
    timeout = 0.5
    recorder = fake_rerank.recorder
    if mode == "error":
        recorder.fail_status = 500
    elif mode == "stall":
        recorder.stall_s = 10.0
    else:
        recorder.raw_reply = b"<html>bad gateway</html>"
    client = _client(fake_rerank, "cohere", timeout_s=timeout)
    started = time.monotonic()
    try:
        with pytest.raises(Unavailable) as caught:
            await client.rerank(QUESTIONS[0], CANDIDATES[0])
    finally:
        elapsed = time.monotonic() - started
        await client.aclose()
    assert caught.value.code == "reranker_unavailable"
    assert fake_rerank.url in caught.value.message
    assert len(recorder.requests) == 1  # it did reach the server
    if mode == "stall":
        assert timeout * 0.9 <= elapsed < timeout + 1.0, elapsed
    else:
        assert elapsed < timeout, elapsed


async def test_one_failing_question_leaves_the_others_of_the_batch_reranked(fake_rerank: FakeRerank) -> None:
    fake_rerank.recorder.fail_query = QUESTIONS[0]
    client = _client(fake_rerank, "cohere")
    try:
        failed, scores = await client.rerank_batch(QUESTIONS, CANDIDATES)
    finally:
        await client.aclose()
    assert isinstance(failed, Unavailable) and failed.code == "reranker_unavailable"
    assert scores == _expected(QUESTIONS[1:], CANDIDATES[1:])[0]


# --- end to end through the worker ---------------------------------------------------------------

#: One-page documents, so that each is one chunk. The decoy shares the question's common words
#: (which BM25 drops as stopwords and the dense arm gives little weight) but not its topic: the
#: fusion ranks it under the Helios page, the fake reranker, which counts every word, above it.
DOCUMENTS = {
    "zephyr": FACTS[1], "kelp": FACTS[2], "helios": FACTS[3], "seville": FACTS[4],
    "decoy": ("How does the team work with the office? Every Monday the Helios office staff meet, "
              "and the manager says how the work does get shared with them. ") * 2,
}
HELIOS = "How does the Helios compiler work with Pascal?"
ORANGES = "When are bitter oranges harvested for marmalade?"


@pytest.fixture
def rerank_settings(redis_url: str, prefix: str, tmp_path: Path, fake_rerank: FakeRerank) -> Settings:
    fake_rerank.recorder.api_key = "k3y"
    return make_settings(redis_url, prefix, tmp_path / "data", reranker_backend="cohere",
                         reranker_base_url=fake_rerank.url, reranker_api_key="k3y", reranker_timeout_s="2",
                         worker_batch_size="8")


class Answered(NamedTuple):
    kinds: list[str]
    sources: list[dict[str, Any]]
    done: dict[str, Any]


async def _events(redis: Redis, keys: Keys, job_id: str) -> Answered:
    for _ in range(600):
        entries = await redis.xrange(keys.events(job_id))
        kinds = [f[b"type"].decode() for _, f in entries]
        if kinds and kinds[-1] in ("done", "error"):
            data = [json.loads(f[b"data"]) for _, f in entries]
            return Answered(kinds, data[kinds.index("sources")]["sources"] if "sources" in kinds else [], data[-1])
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {kinds}")


async def ask_batch(settings: Settings, queries: list[Query]) -> list[Answered]:
    """Queue every query while no worker runs, then start one: it reads them all as one micro-batch."""
    redis = connect(settings.redis)
    keys = Keys(settings.redis.prefix)
    try:
        writer = JobQueue(redis, keys, settings.limits)
        jobs = [new_job(q) for q in queries]
        for job, query in zip(jobs, queries):
            await writer.submit(job, keys.queries, {"question": query.question})
        async with running_worker(settings):
            answered = await asyncio.wait_for(asyncio.gather(*(_events(redis, keys, j.id) for j in jobs)), 60)
    finally:
        await redis.aclose()
    for a in answered:
        assert a.kinds[0] == "sources" and a.kinds[-1] == "done", a.kinds
        assert a.done["timings"]["batch_size"] == len(queries)  # one micro-batch
    return list(answered)


async def _indexed(settings: Settings, tmp_path: Path) -> None:
    paths = [write_pdf(tmp_path / f"{name}.pdf", {1: text}) for name, text in DOCUMENTS.items()]
    async with running_worker(settings):
        redis = connect(settings.redis)
        try:
            results = await asyncio.wait_for(Producer(redis, settings).run(paths, lambda *_: None), 60)
        finally:
            await redis.aclose()
    assert [(r.status, r.chunks) for r in results] == [("sent", 1)] * len(paths)


def _files(answered: Answered) -> list[str]:
    return [s["file"].removesuffix(".pdf") for s in answered.sources]


def _fused(answered: Answered) -> dict[str, float]:
    """Chunk id -> fused score; the fused order is by score, ties in no set order."""
    scores = [s["score"] for s in answered.sources]
    assert scores == sorted(scores, reverse=True)
    return {s["chunk_id"]: s["score"] for s in answered.sources}


def _chunk_of(document: str, sources: list[dict[str, Any]]) -> str:
    # The reranker reads the contextual header, a newline, then the text.
    [source] = [s for s in sources if document == s["snippet"] or document.endswith("\n" + s["snippet"])]
    return str(source["chunk_id"])


async def test_sources_follow_the_reranker(rerank_settings: Settings, fake_rerank: FakeRerank,
                                           tmp_path: Path) -> None:
    await _indexed(rerank_settings, tmp_path)
    recorder = fake_rerank.recorder
    assert recorder.requests == []  # ingest does not rerank
    fused, reranked, oranges, oranges_fused = await ask_batch(rerank_settings, [
        Query(question=HELIOS, top_k=10, rerank=False),
        Query(question=HELIOS, top_k=10),
        Query(question=ORANGES, top_k=2),
        Query(question=ORANGES, top_k=2, rerank=False),
    ])
    # Exactly one request per question of the micro-batch that asked for reranking; none for the others.
    assert sorted(recorder.queries) == sorted([HELIOS, ORANGES])
    assert {r.status for r in recorder.requests} == {200}
    assert {r.headers["authorization"] for r in recorder.requests} == {"Bearer k3y"}
    # The fusion puts the Helios page first; the reranker, the decoy that shares more of the question's words.
    assert _files(fused)[0] == "helios" and _files(reranked)[:2] == ["decoy", "helios"]
    # The reranker got every fused candidate (fewer than RAG_RERANKER_CANDIDATES), in the fused order...
    [helios] = [r for r in recorder.requests if r.body["query"] == HELIOS]
    documents = helios.body["documents"]
    fused_scores = _fused(fused)
    sent = [_chunk_of(d, fused.sources) for d in documents]
    assert sorted(sent) == sorted(fused_scores) and len(sent) == len(DOCUMENTS)
    assert [fused_scores[c] for c in sent] == sorted(fused_scores.values(), reverse=True)
    # ...and the sources come in its order, with its scores, numbered from 1 again.
    scores = [relevance(HELIOS, d, i, len(documents)) for i, d in enumerate(documents)]
    order = sorted(range(len(documents)), key=lambda i: -scores[i])
    assert [s["chunk_id"] for s in reranked.sources] == [sent[i] for i in order]
    assert [s["score"] for s in reranked.sources] == [round(scores[i], 4) for i in order]
    assert [s["n"] for s in reranked.sources] == list(range(1, len(documents) + 1))
    # The extractive answer cites the reranked sources.
    cited = {c["chunk_id"] for c in reranked.done["citations"]}
    assert cited and cited <= {s["chunk_id"] for s in reranked.sources}
    # top_k cuts after reranking: the reranker read every candidate, the question got its top 2.
    [seville] = [r for r in recorder.requests if r.body["query"] == ORANGES]
    assert len(seville.body["documents"]) == len(DOCUMENTS) and seville.body["top_n"] == len(DOCUMENTS)
    assert len(oranges.sources) == len(oranges_fused.sources) == 2
    assert _files(oranges)[0] == _files(oranges_fused)[0] == "seville"


async def test_rerank_false_skips_the_configured_reranker(rerank_settings: Settings, fake_rerank: FakeRerank,
                                                          tmp_path: Path) -> None:
    await _indexed(rerank_settings, tmp_path)
    first, second = await ask_batch(rerank_settings, [Query(question=HELIOS, top_k=10, rerank=False),
                                                      Query(question=ORANGES, rerank=False)])
    assert fake_rerank.recorder.requests == []
    assert _files(first)[0] == "helios" and _files(second)[0] == "seville"
    _fused(first)  # fused scores, in order: no reranker scores


@pytest.mark.parametrize("mode", ["error", "stall"])
async def test_reranker_failure_keeps_the_fused_order(rerank_settings: Settings, fake_rerank: FakeRerank,
                                                      tmp_path: Path, mode: str) -> None:
    await _indexed(rerank_settings, tmp_path)
    recorder = fake_rerank.recorder
    if mode == "error":
        recorder.fail_status = 500
    else:
        recorder.stall_s = 30.0  # past RAG_RERANKER_TIMEOUT_S=2
    fused, unranked = await ask_batch(rerank_settings, [Query(question=HELIOS, top_k=10, rerank=False),
                                                        Query(question=HELIOS, top_k=10)])
    assert recorder.queries == [HELIOS]  # one attempt, not retried
    assert recorder.requests[0].status == (500 if mode == "error" else None)  # a stalled one is not answered yet
    # Sources all the same, in the fused order with the fused scores (not the decoy first), and an answer.
    assert _fused(unranked) == _fused(fused)
    assert _files(unranked)[0] == "helios" and unranked.done["answer"]
    # The search (the rerank call included) waited for the timeout, not for the stall.
    search_ms = unranked.done["timings"]["search_ms"]
    assert (1800 <= search_ms < 3500) if mode == "stall" else search_ms < 1000, search_ms
    redis = Redis.from_url(rerank_settings.redis.url)
    try:
        metrics = await redis.hgetall(Keys(rerank_settings.redis.prefix).metrics)
    finally:
        await redis.aclose()
    assert int(metrics[b"rerank_failures"]) == 1
