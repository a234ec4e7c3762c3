"""After fusion, a question that names a section gets the chunk the section starts with first."""

from __future__ import annotations

from workers.ranking import HeadingMatch
from workers.sparse import Bm25Encoder
from workers.store import Fusion, Hit

BM25 = Bm25Encoder()


def hit(i: int, score: float, section: str, part: int = 0, text: str = "body", **extra: object) -> Hit:
    payload = {"section": section, "text": text, "context": f"Manual > {section}", **extra}
    if part:
        payload["part"] = part  # 0 is left out when stored, as ChunkPayload does
    return Hit(f"c{i}", score, payload)


HITS = [
    hit(0, 2.1, "Configuration variables"),
    hit(1, 2.0, "Configuration options", part=1),  # the named section, but not its first chunk
    hit(2, 1.9, "Maintainer mode"),
    hit(3, 1.8, "Configuration options"),  # where the named section starts
]


DBSF = Fusion()


def order(question: str, hits: list[Hit] = HITS, fusion: Fusion = DBSF) -> list[str]:
    return [h.id for h in HeadingMatch(BM25).rerank(BM25.query(question), hits, fusion)]


def test_a_question_naming_a_section_gets_its_first_chunk_first() -> None:
    for question in ("Tell me about Configuration options.", "Which section covers configuration options?",
                     "configuration options"):
        assert order(question)[0] == "c3", question
    assert order("Tell me about Configuration options.")[1:] == ["c0", "c1", "c2"]  # the rest keep their order
    # In RRF's units as well.
    rrf = [Hit(h.id, 1 / (60 + i), h.payload) for i, h in enumerate(HITS, start=1)]
    assert order("Tell me about Configuration options.", rrf, Fusion(method="rrf"))[0] == "c3"


def test_questions_that_do_not_name_a_section_keep_the_fused_order() -> None:
    ranked = ["c0", "c1", "c2", "c3"]
    assert order("which options does configure take for a shared library build of R") == ranked  # too few of its words
    assert order("maintainer configuration") == ranked  # no heading has all of these words
    assert order("what is it") == ranked  # no searchable word at all


def test_a_point_of_schema_1_starts_its_section_when_its_text_begins_with_the_heading() -> None:
    legacy = [Hit("a", 1.9, {"section": "Using scan directly", "text": "the next page of it"}),
              Hit("b", 1.0, {"section": "Using scan directly", "text": "2.3 Using scan directly\nBoth ..."})]
    assert [h.id for h in HeadingMatch(BM25).rerank(BM25.query("Tell me about using scan directly"), legacy,
                                                     Fusion())] == ["b", "a"]
