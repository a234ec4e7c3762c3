"""Token-aware chunking with the embedder's own tokenizer."""

from __future__ import annotations

import itertools

import pytest
from tokenizers import Tokenizer

from ingest.chunker import Chunker, TokenCounter, Unit
from workers.embedder import MAX_TOKENS, minilm_files

TEXT = ("Photosynthesis in kelp forests converts sunlight into chemical energy; "
        "the Zephyr-7 turbine's 1,234.5 kWh output (approx.) feeds Orkney's grid. ") * 40


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter.minilm()


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    tok = Tokenizer.from_file(str(minilm_files()[1]))
    tok.no_padding()
    tok.no_truncation()
    return tok


def test_counts_match_the_tokenizer_on_whole_texts(counter: TokenCounter, tokenizer: Tokenizer) -> None:
    # WordPiece splits on whitespace first: per-word counts add up to the whole text's.
    words = TEXT.split()
    assert sum(counter.counts(words)) == len(tokenizer.encode(TEXT, add_special_tokens=False).ids)


def test_chunks_fit_the_embedder_and_overlap_by_tokens(counter: TokenCounter, tokenizer: Tokenizer) -> None:
    chunker = Chunker(size_words=1000, overlap_words=500, size_tokens=100, overlap_tokens=20, counter=counter)
    units = [Unit(TEXT[i:i + 400].rsplit(" ", 1)[0], page=1 + i // 2000) for i in range(0, 8000, 400)]
    chunks = list(chunker.chunks(units))
    assert len(chunks) > 5
    original = set(" ".join(u.text for u in units).split())
    for c in chunks:
        assert len(tokenizer.encode(c.text).ids) <= 100 + 2  # + [CLS] and [SEP]
    for c in chunks:
        assert set(c.text.split()) <= original  # never a split word
        assert c.page <= c.page_end
    assert max(len(tokenizer.encode(c.text).ids) for c in chunks) <= MAX_TOKENS


def test_overlap_is_the_tail_of_the_previous_chunk(counter: TokenCounter) -> None:
    words = [f"w{i}" for i in range(300)]
    chunker = Chunker(size_words=1000, overlap_words=999, size_tokens=60, overlap_tokens=12, counter=counter)
    chunks = [c.text.split() for c in chunker.chunks([Unit(" ".join(words), 1)])]
    rebuilt = list(chunks[0])
    for prev, cur in itertools.pairwise(chunks):
        overlap = next(k for k in range(len(cur), -1, -1) if prev[len(prev) - k:] == cur[:k])
        assert 0 < sum(counter.counts(cur[:overlap])) <= 12
        rebuilt += cur[overlap:]
    assert rebuilt == words


def test_table_that_fits_is_never_split(counter: TokenCounter) -> None:
    table = "|a|b|\n|---|---|\n" + "\n".join(f"|x{i}|y{i}|" for i in range(8))
    units = [Unit("lead text " * 30, 1), Unit(table, 2, table=True), Unit("after " * 10, 2)]
    chunker = Chunker(size_words=50, overlap_words=10, size_tokens=120, overlap_tokens=30, counter=counter)
    chunks = list(chunker.chunks(units))
    holding = [c for c in chunks if "|x0|y0|" in c.text]
    assert len(holding) == 1 and table in holding[0].text and holding[0].page_end == 2
    assert not any("|x7|y7|" in c.text for c in chunks if c is not holding[0] and "|x0|y0|" not in c.text
                   and "|a|b|" not in c.text and c.index < holding[0].index)


def test_a_word_longer_than_a_chunk_is_a_chunk_of_its_own(counter: TokenCounter) -> None:
    huge = "a," * 60  # one whitespace-free "word" of 120 tokens: kept whole (the embedder truncates)
    chunker = Chunker(size_words=100, overlap_words=5, size_tokens=50, overlap_tokens=10, counter=counter)
    chunks = list(chunker.chunks([Unit(f"before {huge} after", 3)]))
    assert [c.text for c in chunks] == ["before", huge, "after"]
    assert all(c.page == 3 for c in chunks)


def test_bad_overlap_raises() -> None:
    with pytest.raises(ValueError, match="overlap_tokens"):
        Chunker(size_words=10, overlap_words=2, size_tokens=10, overlap_tokens=10)
