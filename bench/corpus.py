"""Generated multi-page PDFs with known words on known pages (PyMuPDF), for the ingest and batching benchmarks."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pymupdf

_WORDS = (  # noqa: SIM905 - a paragraph of words reads better than a list of them
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so what out up more who will can about them "
    "then some into time only could new these two may first any like now my such other than over its did see "
    "turbine tide harbour contract delivery invoice schedule warranty engineer survey budget launch review customer "
    "release design vendor quote payment milestone clause notice termination report analysis delay pressure valve "
    "pump sensor cable voltage current battery module firmware network server database query index vector embedding "
    "retrieval answer citation document page chapter section figure table appendix summary conclusion method result "
    "sample measure error margin forecast revenue cost margin board minutes agreement party obligation liability "
    "damages insurance audit compliance policy risk control approval"
).split()


def sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(8, 20))]
    return " ".join(words).capitalize() + "."


def page_text(rng: random.Random, words: int) -> str:
    parts: list[str] = []
    count = 0
    while count < words:
        s = sentence(rng)
        parts.append(s)
        count += len(s.split())
    return " ".join(parts)


def _write(folder: Path, name: str, title: str, *, docs: int, pages: int,
           fill: Callable[[pymupdf.Page, int], None]) -> list[Path]:
    """``docs`` PDFs of ``pages`` pages, each page drawn by ``fill(page, number)``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in range(docs):
        doc = pymupdf.open()
        for number in range(pages):
            fill(doc.new_page(), number)
        doc.set_metadata({"title": f"{title} {d + 1}"})
        path = folder / f"{name}-{d + 1:02d}.pdf"
        doc.save(path)
        doc.close()
        paths.append(path)
    return paths


def write_pdfs(folder: Path, *, docs: int, pages: int, words_per_page: int = 300, seed: int = 7) -> list[Path]:
    """``docs`` PDFs of ``pages`` pages each, ``words_per_page`` words of English-like text per page."""
    rng = random.Random(seed)

    def fill(page: pymupdf.Page, _: int) -> None:
        page.insert_textbox(pymupdf.Rect(50, 50, 550, 800), page_text(rng, words_per_page), fontsize=9)

    return _write(folder, "report", "Generated report", docs=docs, pages=pages, fill=fill)


def _ruled_table(page: pymupdf.Page, rng: random.Random, top: float, style: int) -> float:
    """A ruled table of 5 to 12 rows and 3 to 5 columns at ``top``, header row first; returns its bottom.

    Three ways producers draw one: a line per rule (reportlab's grid), a stroked rectangle per
    cell, and a line per rule under a shaded header row.
    """
    cols, rows = rng.randint(3, 5), rng.randint(5, 12)
    width = 495 / cols
    xs = [50 + width * c for c in range(cols + 1)]
    ys = [top + 16 * r for r in range(rows + 1)]
    header = [rng.choice(_WORDS).capitalize() for _ in range(cols)]
    body = [[str(rng.randint(1, 99_999)) if c else " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 2)))
             for c in range(cols)] for _ in range(rows - 1)]
    shape = page.new_shape()
    if style == 1:
        for r in range(rows):
            for c in range(cols):
                shape.draw_rect(pymupdf.Rect(xs[c], ys[r], xs[c + 1], ys[r + 1]))
    else:
        if style == 2:
            page.draw_rect(pymupdf.Rect(xs[0], ys[0], xs[-1], ys[1]), color=None, fill=(0.9, 0.9, 0.9))
        for y in ys:
            shape.draw_line((xs[0], y), (xs[-1], y))
        for x in xs:
            shape.draw_line((x, ys[0]), (x, ys[-1]))
    shape.finish(width=0.5, color=(0.3, 0.3, 0.3))
    shape.commit()
    for r, row in enumerate([header, *body]):
        for c, cell in enumerate(row):
            page.insert_text((xs[c] + 3, ys[r] + 11.5), cell, fontsize=8)
    return ys[-1]


def write_table_pdfs(folder: Path, *, docs: int, pages: int, seed: int = 13) -> list[Path]:
    """Table-heavy PDFs: every page has prose above and below a ruled table (see _ruled_table)."""
    rng = random.Random(seed)

    def fill(page: pymupdf.Page, number: int) -> None:
        page.insert_textbox(pymupdf.Rect(50, 50, 550, 250), page_text(rng, 120), fontsize=9)
        bottom = _ruled_table(page, rng, 260, number % 3)
        page.insert_textbox(pymupdf.Rect(50, bottom + 20, 550, 800), page_text(rng, 120), fontsize=9)

    return _write(folder, "tables", "Generated tables", docs=docs, pages=pages, fill=fill)


def chunk_texts(count: int, *, words: int = 180, seed: int = 11) -> list[str]:
    """Chunk-sized texts, as the chunker makes them (180 words by default)."""
    rng = random.Random(seed)
    return [" ".join(page_text(rng, words).split()[:words]) for _ in range(count)]


_NAMES = ["Azure Falcon", "Copper Lantern", "Silent Orchard", "Granite Heron", "Velvet Comet", "Amber Tundra",
          "Crimson Atlas", "Hollow Meridian", "Ivory Cascade", "Jade Sextant", "Lunar Quarry", "Misty Bastion",
          "Nimble Glacier", "Obsidian Ferry", "Pale Juniper", "Quiet Monsoon", "Russet Pylon", "Saffron Delta",
          "Tidal Lyre", "Umber Citadel", "Violet Canyon", "Woven Beacon", "Young Sequoia", "Zinc Harbour"]
_PEOPLE = ["Ada Okafor", "Bruno Lindqvist", "Chiara Mancini", "Dmitri Petrov", "Elena Duarte", "Farid Haddad",
           "Greta Sorensen", "Hiro Tanaka", "Ines Moreau", "Jonas Becker", "Kalinda Rao", "Luis Ortega"]
_CITIES = ["Lisbon", "Tromso", "Valparaiso", "Kyoto", "Nairobi", "Tallinn", "Cusco", "Hobart", "Quebec", "Bergen"]


def write_fact_pdfs(folder: Path, *, docs: int, pages: int, seed: int = 5) -> list[dict[str, object]]:
    """PDFs where each page holds one unique fact amid filler; returns one gold line per fact.

    Gold lines are ``{"query", "file", "page"}``, the input of ``python -m bench.evaluate``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    golds: list[dict[str, object]] = []
    names = iter(_NAMES * 4)
    for d in range(docs):
        doc = pymupdf.open()
        file = f"facts-{d + 1:02d}.pdf"
        for number in range(1, pages + 1):
            name = next(names) + ("" if len(golds) < len(_NAMES) else f" {len(golds)}")
            person, city = rng.choice(_PEOPLE), rng.choice(_CITIES)
            fact = f"The {name} initiative was approved by {person} at the {city} office."
            text = f"{page_text(rng, 120)} {fact} {page_text(rng, 120)}"
            page = doc.new_page()
            page.insert_textbox(pymupdf.Rect(50, 50, 550, 800), text, fontsize=9)
            golds.append({"query": f"Who approved the {name} initiative, and where?", "file": file, "page": number})
        doc.save(folder / file)
        doc.close()
    return golds


def write_chart_pdfs(folder: Path, *, docs: int, pages: int, marks: int = 2000, seed: int = 17) -> list[Path]:
    """Chart-heavy PDFs: every page has a caption and a scatter plot of ``marks`` small square marks
    (each its own path, as plotting libraries draw them) between axes with tick labels."""
    rng = random.Random(seed)

    def fill(page: pymupdf.Page, _: int) -> None:
        page.insert_textbox(pymupdf.Rect(50, 50, 550, 150), page_text(rng, 80), fontsize=9)
        left, top, right, bottom = 80.0, 180.0, 540.0, 700.0
        shape = page.new_shape()
        shape.draw_line((left, top), (left, bottom))
        shape.draw_line((left, bottom), (right, bottom))
        shape.finish(width=0.8, color=(0, 0, 0))
        for _ in range(marks):
            x, y = rng.uniform(left + 4, right - 4), rng.uniform(top + 4, bottom - 4)
            shape.draw_rect(pymupdf.Rect(x - 2, y - 2, x + 2, y + 2))
            shape.finish(width=0.3, color=(0.1, 0.3, 0.7), fill=(0.5, 0.7, 0.9))
        shape.commit()
        for i in range(6):
            page.insert_text((left - 24, bottom - i * 100 + 3), f"{i * 20}", fontsize=7)
            page.insert_text((left + i * 90 - 4, bottom + 14), f"{i * 10}", fontsize=7)
        page.insert_textbox(pymupdf.Rect(50, 730, 550, 800), page_text(rng, 40), fontsize=9)

    return _write(folder, "charts", "Generated charts", docs=docs, pages=pages, fill=fill)
