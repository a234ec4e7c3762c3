"""Structure-aware chunks from real (generated) PDFs: sections from the outline or from headings, a
contextual header that fits the embedder's window, tables of contents and indexes marked."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import IngestSettings
from core.text import normalize
from ingest.chunker import Chunk, TokenCounter
from ingest.layout import Block
from ingest.parse import ParseStats, parse
from ingest.pdf import PdfReader
from ingest.structure import header, nav_page, nav_title
from tests import ingest_pdfs as make
from workers.embedder import MAX_TOKENS


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter.minilm()


def chunks_of(path: Path, counter: TokenCounter, **settings: object) -> list[Chunk]:
    with PdfReader(path, max_bytes=1 << 30) as reader:
        return list(parse(reader, IngestSettings(**settings), counter))  # type: ignore[arg-type]


TITLES = [title for _, title, _ in make.MANUAL]


@pytest.mark.parametrize("outline", [True, False])
def test_every_section_starts_a_chunk_that_carries_its_path(tmp_path: Path, counter: TokenCounter,
                                                             outline: bool) -> None:
    chunks = chunks_of(make.manual(tmp_path / "m.pdf", outline=outline), counter)
    content = [c for c in chunks if not c.nav]
    for title, number in zip(TITLES, make._numbers()):
        first = next(c for c in content if c.section and title in c.section)
        # The section's first chunk begins with its heading, on the page the section starts on.
        assert first.text.startswith(f"{number} {title}"), first.text[:80]
        assert first.page == 3 + TITLES.index(title)
        assert first.context.startswith("The Orchard Harvester Manual > ")
        assert first.context.endswith(title)
    # A sub-section's path holds its chapter.
    alarms = next(c for c in content if c.section and "Cold store alarms" in c.section)
    assert "Storing the crop" in alarms.context
    # No chunk spans two sections: the filler before a heading stays with the section before.
    for c in content:
        heads = [t for t in TITLES if t in c.text]
        assert len(heads) <= 1, c.text[:120]
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_table_of_contents_and_index_pages_are_recognised(tmp_path: Path, counter: TokenCounter) -> None:
    path = make.manual(tmp_path / "m.pdf")
    kept = chunks_of(path, counter, nav_pages="keep")
    assert {c.page for c in kept if c.nav} == {2, 8}  # the contents page and the index page, nothing else
    assert all(not c.nav for c in kept if 3 <= c.page <= 7)
    # By default they are left out of the index: they repeat every heading and outranked the content.
    stats = ParseStats()
    with PdfReader(path, max_bytes=1 << 30) as reader:
        skipped = list(parse(reader, IngestSettings(), counter, stats))
    assert {c.page for c in skipped} == {1, 3, 4, 5, 6, 7} and stats.nav_pages == [2, 8]
    assert [c.text for c in skipped] == [c.text for c in kept if not c.nav]


def test_a_document_that_is_all_index_is_kept_whole(tmp_path: Path, counter: TokenCounter) -> None:
    import pymupdf

    doc = pymupdf.open()
    page = doc.new_page()
    for i in range(20):  # a price list reads like an index: "term, 12"
        page.insert_text((50, 60 + 18 * i), f"widget model {i}, {10 + i}", fontsize=10)
    doc.save(tmp_path / "list.pdf")
    chunks = chunks_of(tmp_path / "list.pdf", counter)
    assert chunks and "widget model 19, 29" in chunks[-1].text


def test_chunk_and_header_fit_the_embedder_window(tmp_path: Path, counter: TokenCounter) -> None:
    # Long sections: every chunk is cut so that header + text stay within MiniLM's 256 tokens.
    chunks = chunks_of(make.manual(tmp_path / "m.pdf", filler=45), counter, chunk_words=400, overlap_words=20,
                       chunk_tokens=254)
    from tokenizers import Tokenizer

    from workers.embedder import minilm_files

    tokenizer = Tokenizer.from_file(str(minilm_files()[1]))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    longest = max(len(tokenizer.encode(f"{c.context}\n{c.text}").ids) for c in chunks)
    assert longest <= MAX_TOKENS
    assert longest > MAX_TOKENS - 40  # the budget is used, not wasted


def test_a_pdf_without_outline_or_headings_chunks_by_page(tmp_path: Path, counter: TokenCounter) -> None:
    chunks = chunks_of(make.many_pages(tmp_path / "p.pdf", 6, outline=False), counter)
    assert chunks and all(c.section is None and not c.nav for c in chunks)
    assert {c.page for c in chunks} == set(range(1, 7))
    assert all(c.context == "p" for c in chunks)  # the file's name: it has no title


def test_title_comes_from_the_cover_when_the_metadata_has_none(tmp_path: Path) -> None:
    with PdfReader(make.manual(tmp_path / "m.pdf"), max_bytes=1 << 30) as reader:
        assert reader.title == "The Orchard Harvester Manual"


def test_normalize_drops_numbering_and_case() -> None:
    assert normalize("1.1.3  The DESCRIPTION\nfile") == "the description file"
    assert normalize("Chapter 4: Graphics") == "graphics"
    assert normalize("A note on R") == "note on r"  # the same for a title and its heading
    assert normalize("all.equal") == "all.equal"


def test_header_keeps_the_deepest_levels_within_its_budget() -> None:
    assert header("Manual", ["Part", "Chapter", "Section"]) == "Manual > Part > Chapter > Section"
    long = header("Manual", [f"Level {i} with a long descriptive title" for i in range(10)])
    assert long.startswith("Manual > ") and long.endswith("Level 9 with a long descriptive title")
    assert len(long) <= 160


def test_nav_titles_and_pages() -> None:
    for title in ("Contents", "Table of Contents", "Index", "Concept index", "Function and variable index",
                  "List of Figures"):
        assert nav_title(title), title
    for title in ("The INDEX file", "Indexing", "Installing the harvester", "index.html files"):
        assert not nav_title(title), title
    toc = [Block(0, i * 10, 100, i * 10 + 9, f"{i}.1 Topic {i} . . . . . . . . {i + 3}\n") for i in range(10)]
    numbers = [Block(0, i * 10, 100, i * 10 + 9, f"{i * 7}\n") for i in range(12)]  # a program's output
    prose = [Block(0, i * 10, 100, i * 10 + 9, f"Prose line {i} that ends in a year, 2022\n") for i in range(3)]
    assert nav_page(toc) and not nav_page(numbers) and not nav_page(prose)
