"""Reading real PDFs (generated with PyMuPDF): layout, tables, outline sections, scans and bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import IngestSettings
from ingest import pdf
from ingest.chunker import Chunk, TokenCounter
from ingest.errors import BrokenPdf, EmptyPdf, EncryptedPdf, IngestError, NotAPdf, TooLarge
from ingest.layout import Block, Page, drop_repeats, reading_order
from ingest.parse import ParseStats, parse
from ingest.pdf import PdfReader, tessdata
from tests import ingest_pdfs as make


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter.minilm()


def chunks_of(path: Path, counter: TokenCounter, **settings: object) -> tuple[list[Chunk], ParseStats]:
    stats = ParseStats()
    with PdfReader(path, max_bytes=1 << 30) as reader:
        return list(parse(reader, IngestSettings(**settings), counter, stats)), stats  # type: ignore[arg-type]


@pytest.mark.parametrize("rotate", [0, 90, 180, 270])
def test_two_columns_read_column_by_column_without_headers_and_footers(tmp_path: Path, counter, rotate: int) -> None:
    # Rotated pages: MuPDF gives text in the unrotated page's coordinates, ours are the page as shown.
    chunks, stats = chunks_of(make.two_columns(tmp_path / "cols.pdf", pages=3, rotate=rotate), counter)
    text = "\n".join(c.text for c in chunks)
    assert stats.pages == 3
    for n in (1, 2, 3):
        title = text.index(f"Chapter {n}: a title across both columns")
        # Within a page: the title, then the whole left column, then the right one.
        left = text.index("Alpha", title)
        right = text.index("Omega", title)
        assert title < left < right
        assert text.count("Alpha", left, right) >= 6  # all six sentences of the left column first
    assert "ACME Quarterly Report" not in text and "Page 2" not in text
    assert chunks[0].page == 1 and chunks[-1].page_end == 3


def test_table_is_markdown_kept_whole_with_outline_sections(tmp_path: Path, counter) -> None:
    chunks, _ = chunks_of(make.with_table(tmp_path / "table.pdf"), counter, chunk_words=60, overlap_words=5)
    table = [c for c in chunks if "|Fruit|Month|Tonnes|" in c.text]
    assert len(table) == 1
    rows = table[0].text[table[0].text.index("|Fruit|"):].splitlines()
    assert rows[:6] == ["|Fruit|Month|Tonnes|", "|---|---|---|", "|fruit0|month0|100|", "|fruit1|month1|101|",
                        "|fruit2|month2|102|", "|fruit3|month3|103|"]
    assert table[0].section == "Introduction"
    assert "fruit0 month0" not in "\n".join(c.text for c in chunks)  # the cells are not repeated as text
    tail = [c for c in chunks if "goes on" in c.text]
    assert tail[-1].section in ("Introduction", "Results")
    sections = {c.section for c in chunks}
    assert sections <= {"Introduction", "Results"}


def test_big_table_splits_between_rows_under_its_header(tmp_path: Path, counter) -> None:
    chunks, _ = chunks_of(make.with_table(tmp_path / "big.pdf", rows=30), counter, chunk_words=50,
                          overlap_words=0, chunk_tokens=120, overlap_tokens=0)
    parts = [c.text for c in chunks if "|fruit" in c.text]
    assert len(parts) > 1
    for part in parts:
        assert "|Fruit|Month|Tonnes|\n|---|---|---|" in part
    rows = [line for p in parts for line in p.splitlines() if line.startswith("|fruit")]
    assert rows == [f"|fruit{r}|month{r}|{100 + r}|" for r in range(30)]


def test_hyphenated_line_breaks_are_joined(tmp_path: Path, counter) -> None:
    chunks, _ = chunks_of(make.hyphenated(tmp_path / "h.pdf"), counter)
    assert "makes electricity for the islands" in chunks[0].text


def test_outline_sections_follow_the_pages(tmp_path: Path, counter) -> None:
    chunks, _ = chunks_of(make.many_pages(tmp_path / "m.pdf", 25), counter)
    for c in chunks:
        assert c.section == f"Part {(c.page - 1) // 10 + 1}"
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_scanned_page_is_reported_skipped_without_ocr(tmp_path: Path, counter) -> None:
    chunks, stats = chunks_of(make.scanned(tmp_path / "s.pdf"), counter, ocr=False)
    assert stats.skipped_pages == [2] and stats.ocr_pages == []
    assert "normal page" in chunks[0].text


@pytest.mark.skipif(tessdata("eng") is None, reason="Tesseract (tesseract-ocr) is not installed")
def test_scanned_page_is_ocred_with_tesseract(tmp_path: Path, counter) -> None:
    chunks, stats = chunks_of(make.scanned(tmp_path / "s.pdf"), counter)
    assert stats.ocr_pages == [2] and stats.skipped_pages == []
    assert "harvest figures" in " ".join(c.text for c in chunks)


@pytest.mark.skipif(tessdata("eng") is None, reason="Tesseract (tesseract-ocr) is not installed")
@pytest.mark.parametrize("rotate", [90, 180, 270])
def test_ocr_of_a_rotated_scan_reads_top_to_bottom_as_shown(tmp_path: Path, rotate: int) -> None:
    with PdfReader(make.scanned_turned(tmp_path / "turned.pdf", rotate), max_bytes=1 << 30) as reader:
        [page] = reader.read(pdf.OcrOptions())
    assert page.ocr
    text = " ".join(" ".join(b.text.split()) for b in page.blocks)
    assert text.index("Harvest figures") < text.index("Storage notes"), text


@pytest.mark.parametrize("maker, error, code", [
    (make.encrypted, EncryptedPdf, "pdf_encrypted"),
    (make.truncated, BrokenPdf, "pdf_broken"),
    (make.not_a_pdf, NotAPdf, "not_a_pdf"),
    (make.zero_pages, EmptyPdf, "pdf_empty"),
])
def test_bad_files_raise_coded_errors(tmp_path: Path, maker, error: type[IngestError], code: str) -> None:
    path = maker(tmp_path / "bad.pdf")
    with pytest.raises(error) as info:
        PdfReader(path, max_bytes=1 << 30)
    assert info.value.code == code and "bad.pdf" in info.value.message


def test_too_large(tmp_path: Path) -> None:
    path = make.many_pages(tmp_path / "big.pdf", 3)
    with pytest.raises(TooLarge) as info:
        PdfReader(path, max_bytes=100)
    assert info.value.code == "file_too_large"


def _page(number: int, *blocks: tuple[float, float, str]) -> Page:
    return Page(number, 800.0, [Block(50, y, 300, y + 10, text) for y, _, text in
                                [(y, 0, t) for y, _, t in blocks]])


def test_repeated_margin_lines_dropped_only_when_they_repeat() -> None:
    pages = [_page(n, (10, 0, "Journal of Things"), (400, 0, f"body {n}"), (780, 0, f"- {n} -")) for n in range(1, 8)]
    pages[3].blocks.append(Block(50, 20, 300, 30, "A one-off note at the top"))
    kept = [[b.text for b in p.blocks] for p in drop_repeats(pages)]
    assert all(texts[0].startswith("body") for texts in kept)
    assert kept[3] == ["body 4", "A one-off note at the top"]
    # Two pages: nothing repeats often enough to be called a header.
    few = list(drop_repeats([_page(1, (10, 0, "Header")), _page(2, (10, 0, "Header"))]))
    assert [b.text for p in few for b in p.blocks] == ["Header", "Header"]


def test_reading_order_three_columns_under_a_wide_title() -> None:
    title = Block(50, 50, 550, 70, "title")
    cols = [Block(50 + 170 * c, 100 + 100 * r, 200 + 170 * c, 180 + 100 * r, f"c{c}r{r}")
            for r in range(3) for c in range(3)]
    footer = Block(50, 700, 550, 720, "wide footer")
    ordered = [b.text for b in reading_order([footer, *reversed(cols), title])]
    assert ordered == ["title", *[f"c{c}r{r}" for c in range(3) for r in range(3)], "wide footer"]


def test_only_grid_like_line_art_is_searched_for_tables() -> None:
    from ingest.tables import grid_like

    frame = [(20, 20, 575, 21), (20, 821, 575, 822), (20, 20, 21, 822), (574, 20, 575, 822)]
    rules = [(50, 50, 545, 51), (50, 800, 545, 801), (50, 300, 545, 301), (50, 320, 545, 321)]  # underlines too
    assert not grid_like(frame + rules, 67.0, 775.0)
    cells = [(50 + 100 * c, 160 + 20 * r, 150 + 100 * c, 180 + 20 * r) for r in range(2) for c in range(2)]
    assert grid_like(cells, 67.0, 775.0)
    marks = [(60 + 7 * k, 200 + 3 * k, 64 + 7 * k, 204 + 3 * k) for k in range(60)]  # a chart's, 4 pt squares
    axes = [(55, 190, 56, 400), (55, 400, 500, 401)]
    assert not grid_like(marks + axes, 67.0, 775.0)
    assert grid_like(marks + axes + cells, 67.0, 775.0)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> list[Page]:
    path = make.table_layouts(tmp_path_factory.mktemp("tables") / "layouts.pdf")
    with PdfReader(path, max_bytes=1 << 30) as reader:
        return list(reader.read())


def tables_of(page: Page) -> list[str]:
    return [b.text for b in page.blocks if b.table]


def texts_of(page: Page) -> list[str]:
    return [" ".join(b.text.split()) for b in page.blocks if not b.table]


STOCK_MD = "|Item|Store|Count|\n|---|---|---|\n|bolts|Leith|120|\n|nuts|Perth|80|\n|washers|Ayr|15|"


def test_ruled_table_is_one_markdown_block_between_its_paragraphs(layouts: list[Page]) -> None:
    page = layouts[0]
    assert tables_of(page) == [STOCK_MD]
    assert [b.table for b in page.blocks] == [False, False, True, False]  # header, before, table, after
    assert not any("bolts" in t or "Leith" in t for t in texts_of(page))  # cells are not repeated as text


@pytest.mark.parametrize("rotate", [90, 180, 270])
def test_table_on_a_rotated_page_reads_as_shown(tmp_path: Path, rotate: int) -> None:
    # MuPDF gives line art and words in the unrotated page's coordinates: rows would come out as columns.
    with PdfReader(make.rotated_table(tmp_path / "turned.pdf", rotate), max_bytes=1 << 30) as reader:
        [page] = reader.read()
    assert tables_of(page) == [STOCK_MD]
    texts = [b.text for b in page.blocks]
    table = texts.index(STOCK_MD)
    assert all(not t.startswith("After the table") for t in texts[:table])
    assert all(not t.startswith("Before the table") for t in texts[table:])


def test_empty_cell_stays_an_empty_cell(layouts: list[Page]) -> None:
    assert tables_of(layouts[1]) == [STOCK_MD.replace("|bolts|Leith|", "|bolts||")]


def test_two_tables_on_one_page_in_order_with_the_text_between(layouts: list[Page]) -> None:
    page = layouts[2]
    assert tables_of(page) == [STOCK_MD, "|Code|Price|\n|---|---|\n|A1|3.50|\n|B2|4.75|"]
    between = [i for i, b in enumerate(page.blocks) if b.text.startswith("Between the tables")]
    assert [b.table for b in page.blocks[between[0] - 1:between[0] + 2]] == [True, False, True]


def test_table_beside_prose_leaves_the_prose_whole(layouts: list[Page]) -> None:
    page = layouts[3]
    assert tables_of(page) == [STOCK_MD]
    [beside] = [t for t in texts_of(page) if t.startswith("Beside the table")]
    assert beside.endswith("reported to the regional office.") and "bolts" not in beside


def test_rules_that_are_no_grid_are_no_table(layouts: list[Page], tmp_path: Path) -> None:
    # A running header's rule, a title underline and a framed note (one cell): all text stays text.
    page = layouts[4]
    assert tables_of(page) == []
    assert texts_of(page) == ["Stores report", "Stock policy", texts_of(page)[2], "Note: counts exclude returns."]
    import pymupdf

    from ingest import tables

    path = make.table_layouts(tmp_path / "t.pdf")
    with pymupdf.open(path) as doc:  # the grid reader itself, past the grid_like() filter
        textpage = doc[4].get_textpage(flags=pdf.TEXT_FLAGS)
        vectors = [b for b in textpage.extractBLOCKS() if b[6] == 3]
        assert len(vectors) >= 3 and tables.find(doc[4], vectors, textpage) == []


def test_merged_cells_are_left_to_find_tables(layouts: list[Page]) -> None:
    assert tables_of(layouts[5]) == ["|Stock on 1 May|||\n|---|---|---|\n" + STOCK_MD.replace("|---|---|---|\n", "")]


def test_clean_grids_are_read_without_find_tables_and_as_find_tables_reads_them(tmp_path: Path, monkeypatch) -> None:
    import pymupdf

    from ingest import tables

    paths = [make.table_layouts(tmp_path / "layouts.pdf"), make.with_table(tmp_path / "cells.pdf", rows=12)]
    expected = []
    for path in paths:  # PyMuPDF's own find_tables, with our markdown from its cells
        with pymupdf.open(path) as doc:
            for page in doc:
                words = page.get_text("words")
                found = page.find_tables(use_layout=False).tables
                expected.append([tables.markdown([list(r.cells) for r in t.rows], words, tuple(t.bbox)) for t in found])
    called: list[tuple[str, int]] = []
    find_tables = pymupdf.Page.find_tables

    def spy(page: pymupdf.Page, *args: object, **kwargs: object) -> object:
        called.append((page.parent.name.rsplit("/", 1)[-1], page.number + 1))
        return find_tables(page, *args, **kwargs)

    monkeypatch.setattr(pymupdf.Page, "find_tables", spy)
    got = []
    for path in paths:
        with PdfReader(path, max_bytes=1 << 30) as reader:
            got += [tables_of(page) for page in reader.read()]
    assert got == expected and sum(map(len, got)) == 7
    assert called == [("layouts.pdf", 6)]  # only the merged header cell


def test_words_near_the_line_art_are_the_pages_words_there_and_leave_the_text_page_whole(tmp_path: Path) -> None:
    import pymupdf

    from ingest import tables

    with pymupdf.open(make.table_layouts(tmp_path / "layouts.pdf")) as doc:
        for page in doc:
            textpage = page.get_textpage(flags=pdf.TEXT_FLAGS)
            vectors = [b for b in textpage.extractBLOCKS() if b[6] == 3]
            if not vectors:
                continue
            every = textpage.extractWORDS()
            top = min(v[1] for v in vectors) - tables.WORDS_MARGIN
            bottom = max(v[3] for v in vectors) + tables.WORDS_MARGIN
            near = tables._words_near(textpage, vectors)
            assert near == [w for w in every if w[3] > top and w[1] < bottom]
            assert textpage.rect == page.rect and textpage.extractWORDS() == every  # the clip is put back


def test_line_art_past_the_limit_that_is_no_clean_grid_is_not_handed_to_find_tables(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    import pymupdf

    from ingest import tables

    called: list[int] = []
    find_tables = pymupdf.Page.find_tables

    def spy(page: pymupdf.Page, *args: object, **kwargs: object) -> object:
        called.append(page.number + 1)
        return find_tables(page, *args, **kwargs)

    monkeypatch.setattr(pymupdf.Page, "find_tables", spy)
    monkeypatch.setattr(tables, "FIND_TABLES_MAX_PIECES", 10)  # the merged header cell's table has more
    with PdfReader(make.table_layouts(tmp_path / "layouts.pdf"), max_bytes=1 << 30) as reader:
        pages = list(reader.read())
    assert called == []
    assert tables_of(pages[5]) == []
    assert "bolts Leith 120" in " ".join(texts_of(pages[5]))  # its words stay, as text
    assert tables_of(pages[0]) == [STOCK_MD]  # clean grids are still read


def _frames_as_find_tables_joins_them(paths: list, words: list) -> list:
    """make_edges.clean_graphics, plainly (quadratic): the oracle for tables._frames."""
    from ingest import tables

    groups = sorted(paths, key=lambda p: (p[0][3], p[0][0]))
    out = []
    while groups:
        box, exact = list(groups[0][0]), groups[0][1]
        grown = True
        while grown:
            grown = False
            for i in range(len(groups) - 1, 0, -1):
                r, r_exact = groups[i]
                if tables._neighbours(box, r):
                    box = [min(box[0], r[0]), min(box[1], r[1]), max(box[2], r[2]), max(box[3], r[3])]
                    exact = exact and r_exact
                    del groups[i]
                    grown = True
        del groups[0]
        x0, y0, x1, y1 = box
        if x1 - x0 >= tables.TOLERANCE and y1 - y0 >= tables.TOLERANCE and any(
                x0 <= w[0] and w[2] <= x1 and y0 <= w[1] and w[3] <= y1 for w in words):
            out.append(((x0, y0, x1, y1), exact))
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_paths", [40, 400])  # tried one by one, and looked up (past tables.FEW_PATHS)
def test_paths_join_into_frames_as_find_tables_joins_them(seed: int, n_paths: int) -> None:
    import random

    from ingest import tables

    rng = random.Random(seed)
    paths = []
    for _ in range(n_paths):  # rules, cells and marks, touching at random, and now and then a long frame
        x, y = rng.uniform(0, 580), rng.uniform(0, 820)
        w, h = rng.choice([(rng.uniform(0, 1), rng.uniform(5, 40)), (rng.uniform(5, 40), rng.uniform(0, 1)),
                           (rng.uniform(5, 30), rng.uniform(5, 20))] * 30 + [(rng.uniform(50, 300), rng.uniform(1, 200))])
        paths.append(((x, y, x + w, y + h), rng.random() < 0.9))
    words = []
    for _ in range(600):
        x, y = rng.uniform(0, 580), rng.uniform(0, 820)
        words.append((x, y, x + rng.uniform(2, 8), y + rng.uniform(3, 5), "w", 0, 0, 0))
    expected = _frames_as_find_tables_joins_them(paths, words)
    assert tables._frames(paths, words) == expected and len(expected) >= n_paths // 80


@pytest.mark.parametrize("touching", [False, True])
def test_many_curves_are_looked_up_near_each_grid(touching: bool) -> None:
    from ingest import tables

    # A clean 3x3 ruled grid, and past tables.FEW_PATHS curves (a chart's marks) below it.
    art = tables._Art(horizontal=[(y, 100.0, 400.0) for y in (100.0, 120.0, 140.0, 160.0)],
                      vertical=[(x, 100.0, 160.0) for x in (100.0, 200.0, 300.0, 400.0)], paths=[],
                      opaque=[(100.0 + 3 * k, 500.0, 102.0 + 3 * k, 502.0) for k in range(tables.FEW_PATHS * 2)])
    if touching:  # one of them on the grid's right rule: its straight parts may be rules too
        art.opaque[77] = (401.0, 130.0, 404.0, 133.0)
    grids = tables._grids(art, [])
    if touching:
        assert grids is None
    else:
        assert grids is not None and [g.bbox for g in grids] == [(100.0, 100.0, 400.0, 160.0)]


def test_ocr_dpi_is_lowered_only_where_the_image_would_pass_the_pixel_bound() -> None:
    import pymupdf

    with pymupdf.open() as doc:
        doc.new_page(width=612, height=792)
        doc.new_page(width=2400, height=2400)
        letter, poster = doc[0], doc[1]
        assert pdf.ocr_dpi(letter, 200) == 200  # 3.7 million pixels
        assert pdf.ocr_dpi(letter, 300) == 253  # 8.4 million at 300 dpi: lowered
        lowered = pdf.ocr_dpi(poster, 200)  # 44 million pixels at 200 dpi
        assert lowered == 73 and (2400 * lowered / 72) ** 2 <= pdf.OCR_MAX_PIXELS


@pytest.mark.skipif(tessdata("eng") is None, reason="Tesseract (tesseract-ocr) is not installed")
def test_a_poster_sized_scan_is_ocred_within_the_pixel_bound(tmp_path: Path, monkeypatch) -> None:
    import pymupdf

    rendered: list[float] = []
    get_pixmap = pymupdf.Page.get_pixmap

    def spy(page: pymupdf.Page, *args: object, **kwargs: object) -> pymupdf.Pixmap:
        pixmap = get_pixmap(page, *args, **kwargs)
        rendered.append(pixmap.width * pixmap.height)
        return pixmap

    monkeypatch.setattr(pymupdf.Page, "get_pixmap", spy)  # what OCR renders the page to
    with PdfReader(make.scanned(tmp_path / "poster.pdf", width=2400, height=2400), max_bytes=1 << 30) as reader:
        page = list(reader.read(pdf.OcrOptions()))[1]
    assert page.ocr and "harvest figures" in " ".join(b.text for b in page.blocks).lower()
    assert rendered and max(rendered) <= pdf.OCR_MAX_PIXELS
