import re

import pytest

from app.relay import valid_entry_id
from core.protocol import Source
from workers.answers import cited, to_sources
from workers.generator import Answer, ExtractiveGenerator, build_prompt
from workers.store import Hit


def src(n: int, snippet: str = "text", score: float = 0.5, file: str = "a.pdf", page: int = 1) -> Source:
    return Source(
        n=n, file=file, page=page, page_end=page, score=score, snippet=snippet, document_id="doc", chunk_id=f"c{n}"
    )


SOURCES = [src(1), src(2), src(3)]


def test_cited_picks_the_cited_sources():
    assert [s.n for s in cited("A [1] and B [3].", SOURCES)] == [1, 3]
    assert [s.n for s in cited("[2][2]", SOURCES)] == [2]


@pytest.mark.parametrize("answer", ["no citation", "[9] is out of range", ""])
def test_cited_falls_back_to_all_sources(answer):
    assert cited(answer, SOURCES) == SOURCES


def test_to_sources_numbers_from_one_and_maps_payload():
    hits = [
        Hit(
            id="c-a",
            score=0.876543,
            payload={"file": "a.pdf", "page": 3, "page_end": 4, "text": "alpha", "document_id": "d1"},
        ),
        Hit(id="c-b", score=0.5, payload={"file": "b.pdf", "page": 7, "text": "beta", "document_id": "d2"}),
        Hit(id="c-c", score=0.1, payload={}),
    ]
    a, b, c = to_sources(hits)
    assert a == Source(
        n=1, file="a.pdf", page=3, page_end=4, score=0.8765, snippet="alpha", document_id="d1", chunk_id="c-a"
    )
    assert (b.n, b.page, b.page_end, b.snippet, b.chunk_id) == (2, 7, 7, "beta", "c-b")
    assert (c.n, c.file, c.page, c.page_end, c.snippet, c.document_id) == (3, "", 0, 0, "", "")
    assert to_sources([]) == []


async def collect(question: str, sources: list[Source]) -> tuple[str, Answer]:
    answer = Answer()
    parts = [p async for p in ExtractiveGenerator().stream(question, sources, answer)]
    return "".join(parts), answer


async def test_extractive_answer_cites_the_matching_sentence():
    sources = [
        src(1, "Bananas are yellow. The sky is blue."),
        src(2, "Paris is the capital of France. It has many museums."),
    ]
    text, answer = await collect("What is the capital of France?", sources)
    assert "Paris is the capital of France. [2]" in text
    assert re.search(r"\[\d+\]", text)
    assert "Bananas" not in text
    assert answer.usage.completion_tokens == len(text.split(" "))


async def test_extractive_answer_without_overlap_uses_best_source():
    text, _ = await collect("zzz qqq", [src(4, "Nothing relevant here."), src(5, "Other.")])
    assert text == "Nothing relevant here. [4]"


async def test_extractive_answer_without_sources_says_so():
    text, answer = await collect("anything?", [])
    assert text == "No indexed passage matches this question."
    assert answer.usage.completion_tokens == 0


def test_build_prompt_numbers_sources_and_truncates():
    prompt = build_prompt("Why?", [src(1, "x" * 50, file="a.pdf", page=2), src(2, "short", file="b.pdf", page=9)], 10)
    assert "[1] a.pdf, page 2:\n" + "x" * 10 + "\n\n" in prompt
    assert "x" * 11 not in prompt
    assert "[2] b.pdf, page 9:\nshort" in prompt
    assert prompt.endswith("Question: Why?")
    assert prompt.index("[1]") < prompt.index("[2]") < prompt.index("Question:")


def test_build_prompt_without_sources():
    assert build_prompt("Why?", [], 100) == "Sources:\n\n(no sources found)\n\nQuestion: Why?"


@pytest.mark.parametrize(
    "value, ok",
    [
        ("1700000000000-0", True),
        ("0-0", True),
        ("12-345", True),
        ("abc", False),
        ("", False),
        ("1-2-3", False),
        ("$", False),
        ("1700000000000", False),
        ("-1-0", False),
        ("1-0\n", False),
    ],
)
def test_valid_entry_id(value, ok):
    assert valid_entry_id(value) is ok
