"""Job events as OpenAI chunks: sources first, annotations where each [n] closes, a retaken answer not repeated."""

from __future__ import annotations

import pytest

from app.completions import RestartedDifferently, Translation, citation_title
from core.protocol import Done, Source, Sources, Token, Usage


def source(n: int, page: int = 1) -> Source:
    return Source(n=n, file="a.pdf", page=page, page_end=page, score=1.0, snippet=f"text {n}", document_id="d",
                  chunk_id=f"c{n}", title="A report")


def translation(**kwargs: bool) -> Translation:
    t = Translation(completion_id="chatcmpl-1", model="default", created=1, url=lambda s: f"http://x/{s.n}", **kwargs)
    t.opening(Sources(sources=[source(1), source(2, page=3)]))
    return t


def annotations(chunk: dict | None) -> list[dict]:  # type: ignore[type-arg]
    return (chunk or {}).get("choices", [{}])[0].get("delta", {}).get("annotations", [])


def test_a_marker_split_across_tokens_is_annotated_once_where_it_closes() -> None:
    t = translation()
    chunks = [t.token(Token(text=text)) for text in ("Tides [", "2] and [2", "] and [1].")]
    assert annotations(chunks[0]) == []
    [first] = annotations(chunks[1])
    assert first["url_citation"] == {"url": "http://x/2", "title": "A report, p. 3", "start_index": 6, "end_index": 9}
    assert t.text[6:9] == "[2]"
    assert [a["url_citation"]["url"] for a in annotations(chunks[2])] == ["http://x/1"]  # [2] again: not repeated


def test_the_closing_chunk_repeats_sources_with_citations_and_usage() -> None:
    t = translation()
    t.token(Token(text="Tides [1]."))
    done = Done(answer="Tides [1].", citations=[source(1), source(2, page=3)], usage=Usage(prompt_tokens=5,
                                                                                          completion_tokens=3))
    [last] = t.closing(done)
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["citations"] == ["http://x/1", "http://x/2"] and len(last["search_results"]) == 2
    assert last["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    # A source the answer relies on without citing it is annotated over the whole answer.
    assert [(a["url_citation"]["url"], a["url_citation"]["end_index"]) for a in annotations(last)] == [
        ("http://x/2", len("Tides [1]."))]
    last, usage = translation(include_usage=True).closing(done)
    assert "usage" not in last and usage["choices"] == [] and usage["usage"]["total_tokens"] == 8


def test_a_retaken_answer_goes_on_after_what_was_sent_and_stops_when_it_differs() -> None:
    t = translation()
    t.token(Token(text="Tides near "))
    t.restart()
    assert t.token(Token(text="Tides ")) is None
    chunk = t.token(Token(text="near Orkney."))
    assert chunk is not None and chunk["choices"][0]["delta"]["content"] == "Orkney."
    t.restart()
    with pytest.raises(RestartedDifferently):
        t.token(Token(text="Waves"))


def test_not_streamed_the_message_carries_every_annotation() -> None:
    t = translation()
    done = Done(answer="A [2], B [1], C [2].", citations=[source(1), source(2, page=3)])
    message = t.completion(done)["choices"][0]["message"]
    assert [(a["url_citation"]["start_index"], a["url_citation"]["url"]) for a in message["annotations"]] == [
        (2, "http://x/2"), (9, "http://x/1")]
    assert citation_title(Source(n=1, file="f.pdf", page=2, page_end=4, score=0, snippet="", document_id="d",
                                 chunk_id="c")) == "f.pdf, pp. 2-4"


def test_sources_listed_in_the_answer_for_clients_that_show_no_annotations() -> None:
    t = Translation(completion_id="c", model="m", created=1, url=lambda s: f"http://x/{s.n}", source_list=True)
    t.opening(Sources(sources=[source(1)]))
    done = Done(answer="Tides [1].", citations=[source(1)])
    assert t.completion(done)["choices"][0]["message"]["content"] == (
        "Tides [1].\n\nSources:\n\n- [1] [A report, p. 1](http://x/1)")
    assert t.closing(done)[0]["choices"][0]["delta"]["content"].endswith("(http://x/1)")
