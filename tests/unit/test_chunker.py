from itertools import pairwise

import pytest

from ingest.chunker import Chunk, chunk_pages


def words(prefix: str, n: int, start: int = 0) -> str:
    return " ".join(f"{prefix}{i}" for i in range(start, start + n))


def test_windows_and_page_spans_across_page_boundary():
    pages = [(1, words("w", 10)), (2, words("w", 10, start=10))]
    chunks = list(chunk_pages(pages, size=8, overlap=3))
    assert chunks == [
        Chunk(words("w", 8), 1, 1, 0),
        Chunk(words("w", 8, start=5), 1, 2, 1, part=1),  # one section (none): parts count along it
        Chunk(words("w", 8, start=10), 2, 2, 2, part=2),
        Chunk(words("w", 5, start=15), 2, 2, 3, part=3),
    ]


def test_no_tail_chunk_when_last_window_covers_the_end():
    chunks = list(chunk_pages([(1, words("w", 13))], size=8, overlap=3))
    assert [c.text.split()[-1] for c in chunks] == ["w7", "w12"]


@pytest.mark.parametrize("n, size, overlap", [(1, 5, 0), (37, 10, 4), (100, 7, 6), (50, 5, 0), (23, 23, 1)])
def test_all_words_covered_in_order_with_exact_overlap(n, size, overlap):
    text = words("x", n)
    chunks = list(chunk_pages([(1, text)], size=size, overlap=overlap))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    rebuilt = chunks[0].text.split()
    for prev, cur in pairwise(chunks):
        a, b = prev.text.split(), cur.text.split()
        assert len(a) == size and len(b) <= size
        if overlap:
            assert a[-overlap:] == b[:overlap]
        rebuilt += b[overlap:]
    assert rebuilt == text.split()


def test_words_are_never_split():
    text = "Supercalifragilistic, well-known e-mail: naïve   café.\n\tEnd!"
    chunks = list(chunk_pages([(4, text)], size=3, overlap=1))
    original = text.split()
    for c in chunks:
        assert all(w in original for w in c.text.split())
    assert chunks[0].text == "Supercalifragilistic, well-known e-mail:"


def test_short_document_gives_one_chunk():
    assert list(chunk_pages([(1, "just three words"), (2, "and more")], size=50, overlap=10)) == [
        Chunk("just three words and more", 1, 2, 0)
    ]


def test_empty_pages_give_no_chunk_and_do_not_break_spans():
    assert list(chunk_pages([(1, ""), (2, "   \n")], size=5, overlap=1)) == []
    assert list(chunk_pages([], size=5, overlap=1)) == []
    assert list(chunk_pages([(1, "a b"), (2, ""), (3, "c")], size=5, overlap=1)) == [Chunk("a b c", 1, 3, 0)]


@pytest.mark.parametrize("overlap", [5, 6])
def test_overlap_not_smaller_than_size_raises(overlap):
    with pytest.raises(ValueError, match="overlap"):
        list(chunk_pages([(1, "a b c")], size=5, overlap=overlap))
