from core.protocol import NOT_FOUND_ANSWER, Source
from workers.citations import cite, says_not_found
from workers.passages import Context, Scored


def src(n: int) -> Source:
    return Source(n=n, file=f"{n}.pdf", page=1, page_end=1, score=0.5, snippet="", document_id="d", chunk_id=f"c{n}")


SOURCES = [src(1), src(2), src(3)]
CONTEXT = Context([Scored(SOURCES[0], 0, "The Zephyr turbine converts tidal currents into electricity.", 0.8),
                   Scored(SOURCES[1], 0, "Marmalade is made in Dundee from Seville oranges.", 0.5)], found=True)


def numbers(picked: list[Source]) -> list[int]:
    return [s.n for s in picked]


def test_the_cited_numbers_are_the_citations():
    picked, supported = cite("A [1] and B [3].", CONTEXT, SOURCES)
    assert numbers(picked) == [1, 3] and supported
    assert numbers(cite("[2][2]", CONTEXT, SOURCES)[0]) == [2]


def test_numbers_with_no_such_source_are_dropped():
    picked, supported = cite("It is so [9].", CONTEXT, SOURCES)
    assert picked == [] and not supported


def test_an_uncited_answer_cites_the_sources_that_support_it():
    picked, supported = cite("The Zephyr turbine turns tidal currents into electricity.", CONTEXT, SOURCES)
    assert numbers(picked) == [1] and supported


def test_an_uncited_answer_nothing_supports_is_flagged():
    picked, supported = cite("The turbine was painted green by the mayor in 1850.", CONTEXT, SOURCES)
    assert picked == [] and not supported


def test_not_found_cites_nothing_and_is_not_unsupported():
    assert cite(NOT_FOUND_ANSWER, CONTEXT, SOURCES) == ([], True)
    assert says_not_found(NOT_FOUND_ANSWER + " Try another question.")
    assert says_not_found("i found nothing on this in the documents")
    assert not says_not_found("I found the turbine on page 2.")
