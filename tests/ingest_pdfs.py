"""Real PDFs for the ingest tests, generated with PyMuPDF: columns, tables, outlines, scans, bad files."""

from __future__ import annotations

from pathlib import Path

import pymupdf

WIDTH, HEIGHT = 595, 842
LEFT_TEXT = ("Alpha column sentence about tidal turbines and the Orkney islands grid. " * 6).strip()
RIGHT_TEXT = ("Omega column sentence about Seville oranges and bitter marmalade. " * 6).strip()


def _header_footer(page: pymupdf.Page, number: int) -> None:
    page.insert_text(pymupdf.Point(50, 30) * page.derotation_matrix, "ACME Quarterly Report - Confidential",
                     fontsize=9, rotate=page.rotation)
    page.insert_text(pymupdf.Point(270, 820) * page.derotation_matrix, f"Page {number}", fontsize=9,
                     rotate=page.rotation)


def _textbox(page: pymupdf.Page, rect: pymupdf.Rect, text: str, fontsize: float) -> None:
    """Text upright as the page is displayed, whatever its /Rotate."""
    page.insert_textbox(rect * page.derotation_matrix, text, fontsize=fontsize, rotate=page.rotation)


def paragraphs(seed: int, n: int = 3, words: int = 60) -> list[str]:
    vocab = ("tidal turbine energy grid ocean kelp carbon sugar compiler pascal module oranges harvest "  # noqa: SIM905
             "january seville island wind storage battery network protocol stream worker query").split()
    return [" ".join(f"{vocab[(seed * 7 + p * 13 + i * 5) % len(vocab)]}{(seed + i) % 97}" for i in range(words))
            for p in range(n)]


def two_columns(path: Path, pages: int = 3, rotate: int = 0) -> Path:
    """A full-width title, then two columns of different text; a header and a footer on every page.

    ``rotate``: the pages are stored turned (landscape for 90 and 270) with a /Rotate that shows
    them upright, as scanners and some generators write them.
    """
    doc = pymupdf.open()
    for n in range(1, pages + 1):
        page = doc.new_page(width=HEIGHT, height=WIDTH) if rotate % 180 else doc.new_page(width=WIDTH, height=HEIGHT)
        page.set_rotation(rotate)
        _header_footer(page, n)
        _textbox(page, pymupdf.Rect(50, 80, 545, 105), f"Chapter {n}: a title across both columns", 14)
        _textbox(page, pymupdf.Rect(50, 110, 290, 780), LEFT_TEXT, 10)
        _textbox(page, pymupdf.Rect(305, 110, 545, 780), RIGHT_TEXT, 10)
    doc.set_metadata({"title": "Two columns"})
    doc.save(path)
    doc.close()
    return path


def with_table(path: Path, rows: int = 4) -> Path:
    """Text, a ruled table, more text; an outline with two entries."""
    doc = pymupdf.open()
    page = doc.new_page(width=WIDTH, height=HEIGHT)
    page.insert_text((50, 60), "Introduction", fontsize=14)
    page.insert_textbox(pymupdf.Rect(50, 70, 545, 140), "The table below lists fruit harvests per month.",
                        fontsize=10)
    header = ["Fruit", "Month", "Tonnes"]
    data = [header] + [[f"fruit{r}", f"month{r}", str(100 + r)] for r in range(rows)]
    x = [50, 200, 350, 500]
    y0 = 160
    for r, row in enumerate(data):
        for c, cell in enumerate(row):
            page.draw_rect(pymupdf.Rect(x[c], y0 + r * 20, x[c + 1], y0 + (r + 1) * 20), color=(0, 0, 0), width=0.5)
            page.insert_text((x[c] + 4, y0 + r * 20 + 14), cell, fontsize=10)
    below = y0 + len(data) * 20 + 30
    page.insert_text((50, below), "Results", fontsize=14)
    page.insert_textbox(pymupdf.Rect(50, below + 10, 545, below + 80), "After the table the text goes on.",
                        fontsize=10)
    doc.set_toc([[1, "Introduction", 1], [1, "Results", 1]])
    doc.save(path)
    doc.close()
    return path


def ruled(page: pymupdf.Page, x: float, y: float, rows: list[list[str]], *, width: float = 90,
          height: float = 18, span_header: bool = False) -> None:
    """A table ruled with lines, one path as report writers draw it, a text in each cell (an empty
    string: an empty cell). ``span_header``: the first row is one cell across all columns.
    Coordinates are the page's as shown: on a page with a /Rotate the table is upright."""
    turn = page.derotation_matrix
    xs = [x + width * c for c in range(len(rows[0]) + 1)]
    ys = [y + height * r for r in range(len(rows) + 1)]
    shape = page.new_shape()
    for y_ in ys:
        shape.draw_line(pymupdf.Point(xs[0], y_) * turn, pymupdf.Point(xs[-1], y_) * turn)
    for x_ in xs:
        top = ys[1] if span_header and x_ not in (xs[0], xs[-1]) else ys[0]
        shape.draw_line(pymupdf.Point(x_, top) * turn, pymupdf.Point(x_, ys[-1]) * turn)
    shape.finish(width=0.5)
    shape.commit()
    for r, row in enumerate(rows):
        for c, text in enumerate(row):
            if text:
                page.insert_text(pymupdf.Point(xs[c] + 4, ys[r] + 13) * turn, text, fontsize=9, rotate=page.rotation)


def rotated_table(path: Path, rotate: int) -> Path:
    """A ruled table between two paragraphs on a page stored turned, with a /Rotate that shows it upright
    (landscape pages of wide tables are often written so)."""
    doc = pymupdf.open()
    page = doc.new_page(width=HEIGHT, height=WIDTH) if rotate % 180 else doc.new_page(width=WIDTH, height=HEIGHT)
    page.set_rotation(rotate)
    _textbox(page, pymupdf.Rect(50, 80, 545, 150), "Before the table. " + PROSE, 10)
    ruled(page, 50, 170, STOCK)
    _textbox(page, pymupdf.Rect(50, 260, 545, 330), "After the table. " + PROSE, 10)
    doc.save(path)
    doc.close()
    return path


STOCK = [["Item", "Store", "Count"], ["bolts", "Leith", "120"], ["nuts", "Perth", "80"], ["washers", "Ayr", "15"]]
PRICES = [["Code", "Price"], ["A1", "3.50"], ["B2", "4.75"]]
PROSE = "Stock is counted every Monday by the store manager and reported to the regional office. " * 3


def table_layouts(path: Path) -> Path:
    """One layout a page: (1) a ruled table between paragraphs, (2) a table with an empty cell,
    (3) two tables with a paragraph between, (4) a table beside a column of prose, (5) no table:
    a header rule, a title underline and a framed note, (6) a header cell across all columns."""
    doc = pymupdf.open()

    def page() -> pymupdf.Page:
        new = doc.new_page(width=WIDTH, height=HEIGHT)
        new.insert_text((50, 30), "Stores report", fontsize=9)
        new.draw_line((50, 36), (545, 36), width=0.5)  # a running header's rule
        return new

    p = page()
    p.insert_textbox(pymupdf.Rect(50, 80, 545, 150), "Before the table. " + PROSE, fontsize=10)
    ruled(p, 50, 170, STOCK)
    p.insert_textbox(pymupdf.Rect(50, 260, 545, 330), "After the table. " + PROSE, fontsize=10)
    ruled(page(), 50, 100, [STOCK[0], ["bolts", "", "120"], *STOCK[2:]])
    p = page()
    ruled(p, 50, 100, STOCK)
    p.insert_textbox(pymupdf.Rect(50, 190, 545, 260), "Between the tables. " + PROSE, fontsize=10)
    ruled(p, 50, 280, PRICES)
    p = page()
    ruled(p, 50, 100, STOCK, width=75)
    p.insert_textbox(pymupdf.Rect(320, 100, 545, 400), "Beside the table. " + PROSE, fontsize=10)
    p = page()
    p.insert_text((50, 100), "Stock policy", fontsize=14)
    p.draw_line((50, 106), (545, 106), width=1)
    p.insert_textbox(pymupdf.Rect(50, 120, 545, 200), PROSE, fontsize=10)
    p.draw_rect(pymupdf.Rect(50, 220, 545, 260), width=0.5)
    p.insert_textbox(pymupdf.Rect(56, 226, 540, 256), "Note: counts exclude returns.", fontsize=10)
    ruled(page(), 50, 100, [["Stock on 1 May", "", ""], *STOCK], span_header=True)
    doc.save(path)
    doc.close()
    return path


def hyphenated(path: Path) -> Path:
    doc = pymupdf.open()
    page = doc.new_page(width=WIDTH, height=HEIGHT)
    page.insert_text((50, 100), "Tidal power makes electri-", fontsize=11)
    page.insert_text((50, 114), "city for the islands every day.", fontsize=11)
    doc.save(path)
    doc.close()
    return path


def many_pages(path: Path, pages: int, *, outline: bool = True) -> Path:
    """``pages`` pages of varied text, a header and a footer on each, an outline entry every 10 pages."""
    doc = pymupdf.open()
    for n in range(1, pages + 1):
        page = doc.new_page(width=WIDTH, height=HEIGHT)
        _header_footer(page, n)
        y = 60
        for text in paragraphs(n):
            page.insert_textbox(pymupdf.Rect(50, y, 545, y + 200), text, fontsize=10)
            y += 220
    if outline:
        doc.set_toc([[1, f"Part {p // 10 + 1}", p] for p in range(1, pages + 1, 10)])
    doc.save(path)
    doc.close()
    return path


def scanned(path: Path, text: str = "Scanned pages hold harvest figures", *, width: float = WIDTH,
            height: float = HEIGHT) -> Path:
    """Page 1 has text; page 2 is only an image of text (no text layer), ``width`` x ``height`` points."""
    source = pymupdf.open()
    page = source.new_page(width=WIDTH, height=HEIGHT)
    page.insert_text((50, 100), text, fontsize=28)
    pixmap = page.get_pixmap(dpi=150)
    source.close()
    doc = pymupdf.open()
    doc.new_page(width=WIDTH, height=HEIGHT).insert_text((50, 100), "A normal page with a text layer.", fontsize=11)
    doc.new_page(width=width, height=height).insert_image(pymupdf.Rect(0, 0, width, height), pixmap=pixmap)
    doc.save(path)
    doc.close()
    return path


def scanned_turned(path: Path, rotate: int) -> Path:
    """A scan of two paragraphs on a page stored turned, with a /Rotate that shows it upright."""
    source = pymupdf.open()
    page = source.new_page(width=WIDTH, height=HEIGHT)
    page.insert_text((50, 100), "Harvest figures come first", fontsize=24)
    page.insert_text((50, 400), "Storage notes come after", fontsize=24)
    pixmap = page.get_pixmap(dpi=150)
    source.close()
    doc = pymupdf.open()
    page = doc.new_page(width=HEIGHT, height=WIDTH) if rotate % 180 else doc.new_page(width=WIDTH, height=HEIGHT)
    page.set_rotation(rotate)
    page.insert_image(page.rect * page.derotation_matrix, pixmap=pixmap, rotate=rotate)
    doc.save(path)
    doc.close()
    return path


def encrypted(path: Path) -> Path:
    doc = pymupdf.open()
    doc.new_page().insert_text((50, 100), "secret text", fontsize=11)
    doc.save(path, encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="owner", user_pw="user")
    doc.close()
    return path


def truncated(path: Path) -> Path:
    many_pages(path, 3, outline=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def not_a_pdf(path: Path) -> Path:
    path.write_text("just some notes, renamed to .pdf\n" * 10)
    return path


def zero_pages(path: Path) -> Path:
    """A syntactically valid PDF whose page tree is empty (PyMuPDF refuses to save one)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path


#: The manual's sections: (level, title, body sentences). Bodies use words no other section has.
MANUAL = [
    (1, "Installing the harvester", ("The harvester installs from a signed tarball on every supported platform. "
     "Unpack the tarball, run the installer script and point it at the orchard database.")),
    (2, "Configuring orchards", ("Each orchard gets a stanza in orchards.toml naming its rows and its pickers. "
     "The HARVEST_ROWS variable overrides the row count for one run.")),
    (2, "Scheduling pickers", ("Pickers are scheduled by the rota engine, which balances shifts across the week. "
     "A picker marked absent is skipped and the shift goes to the standby list.")),
    (1, "Storing the crop", ("Crates go to the cold store within two hours of picking. "
     "The cold store keeps apples at three degrees and pears at one degree.")),
    (2, "Cold store alarms", ("When the temperature rises above five degrees the alarm pages the night warden. "
     "The warden acknowledges it with the silence-alarm command.")),
]


def manual(path: Path, *, outline: bool = True, heading_size: float = 16, filler: int = 14) -> Path:
    """A small reference manual: a title page, a table of contents with dot leaders, numbered
    sections that start mid-page (the outline names them without their numbers), and an index."""
    doc = pymupdf.open()
    cover = doc.new_page(width=WIDTH, height=HEIGHT)
    cover.insert_text((50, 200), "The Orchard Harvester Manual", fontsize=24)
    cover.insert_text((50, 240), "Version 3", fontsize=11)
    contents = doc.new_page(width=WIDTH, height=HEIGHT)
    contents.insert_text((50, 80), "Table of Contents", fontsize=heading_size)
    numbers, toc = _numbers(), []
    y = 110
    for (level, title, _), number in zip(MANUAL, numbers):
        contents.insert_text((50 + 15 * (level - 1), y), f"{number} {title} " + ". " * 30 + f" {3 + len(toc)}",
                             fontsize=10)
        y += 18
        toc.append(title)
    for extra in range(12):  # a long table of contents: it outranked the sections it lists
        contents.insert_text((50, y), f"A.{extra} Appendix topic {extra} " + ". " * 30 + f" {20 + extra}", fontsize=10)
        y += 18
    entries: list[list[object]] = [[1, "Contents", 2]]
    filler_text = " ".join(f"routine{i} maintenance{i} note{i}." for i in range(filler))
    for (level, title, body), number in zip(MANUAL, numbers):
        page = doc.new_page(width=WIDTH, height=HEIGHT)
        # Each section starts mid-page, after the tail of the one before it.
        # insert_textbox writes nothing at all when the text does not fit: never silently.
        assert page.insert_textbox(pymupdf.Rect(50, 60, 545, 300), filler_text, fontsize=10) >= 0, "filler too long"
        page.insert_text((50, 330), f"{number} {title}", fontsize=heading_size if level == 1 else heading_size - 3)
        assert page.insert_textbox(pymupdf.Rect(50, 345, 545, 800), body + " " + filler_text, fontsize=10) >= 0
        entries.append([level, title, doc.page_count])
    index = doc.new_page(width=WIDTH, height=HEIGHT)
    index.insert_text((50, 80), "Index", fontsize=heading_size)
    terms = ["alarm", "cold store", "crates", "harvester", "orchards.toml", "pickers", "rota", "standby list",
             "tarball", "warden", "HARVEST_ROWS", "silence-alarm"]
    for i, term in enumerate(terms):
        index.insert_text((50, 110 + 18 * i), f"{term}, {3 + i % 5}, {4 + i % 3}", fontsize=10)
    entries.append([1, "Index", doc.page_count])
    if outline:
        doc.set_toc(entries)
    doc.save(path)
    doc.close()
    return path


def _numbers() -> list[str]:
    out, chapter, section = [], 0, 0
    for level, _, _ in MANUAL:
        if level == 1:
            chapter, section = chapter + 1, 0
            out.append(str(chapter))
        else:
            section += 1
            out.append(f"{chapter}.{section}")
    return out
