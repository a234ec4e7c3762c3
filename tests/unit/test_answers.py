import pytest

from app.relay import valid_entry_id
from core.protocol import NOT_FOUND_ANSWER, Source
from workers.answers import to_sources
from workers.generator import Answer, ExtractiveGenerator, build_prompt
from workers.passages import Context, Scored
from workers.store import Hit


def src(n: int, snippet: str = "text", score: float = 0.5, file: str = "a.pdf", page: int = 1) -> Source:
    return Source(
        n=n, file=file, page=page, page_end=page, score=score, snippet=snippet, document_id="doc", chunk_id=f"c{n}"
    )



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


def context(*picked: tuple[Source, str, float], found: bool = True) -> Context:
    return Context([Scored(source, i, text, score) for i, (source, text, score) in enumerate(picked)], found=found)


async def collect(question: str, ctx: Context) -> tuple[str, Answer]:
    answer = Answer()
    parts = [p async for p in ExtractiveGenerator().stream(question, ctx, answer)]
    return "".join(parts), answer


async def test_extractive_answer_is_the_best_sentences_each_cited():
    a, b = src(1, "Bananas are yellow."), src(2, "Paris is the capital of France.")
    text, answer = await collect("What is the capital of France?", context(
        (b, "Paris is the capital of France.", 0.9), (a, "Paris has many museums.", 0.8),
        (a, "Bananas are yellow.", 0.2)))
    assert text == "Paris is the capital of France. [2] Paris has many museums. [1]"
    assert answer.usage.completion_tokens == len(text.split(" "))


async def test_extractive_answer_takes_at_most_three_sentences():
    s = src(1)
    text, _ = await collect("q", context(*((s, f"Fact {i}.", 0.9) for i in range(5))))
    assert text == "Fact 0. [1] Fact 1. [1] Fact 2. [1]"


async def test_extractive_answer_when_nothing_answers_says_not_found():
    text, _ = await collect("anything?", context((src(1), "Unrelated.", 0.1), found=False))
    assert text == NOT_FOUND_ANSWER
    text, _ = await collect("anything?", Context([], found=False))
    assert text == NOT_FOUND_ANSWER


def test_build_prompt_labels_each_source_with_its_sentences_in_document_order():
    a, b = src(1, file="a.pdf", page=2), src(2, file="b.pdf", page=9)
    ctx = Context([Scored(b, 0, "Short.", 0.9), Scored(a, 3, "Later.", 0.8), Scored(a, 0, "First.", 0.7),
                   Scored(a, 4, "Next.", 0.6)], found=True)
    prompt = build_prompt("Why?", ctx)
    assert "[1] a.pdf, page 2: First. … Later. Next.\n\n[2] b.pdf, page 9: Short.\n\n" in prompt
    assert prompt.endswith("Question: Why?")


def test_build_prompt_without_sources():
    assert build_prompt("Why?", Context([], found=False)) == "Sources:\n\n(no sources found)\n\nQuestion: Why?"


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
