"""``python -m bench.headings COLLECTION --out FILE.jsonl``: a page-level dev set made from the PDFs' outlines.

Every outline entry names a section and the page it starts on, so a question built from a
heading has a gold page nobody had to pick by hand. Such questions flatter retrieval (the
words are on the page, usually in a heading), which is why bench/devsets/ pairs each of
these sets with hand-written paraphrased questions; use them to catch regressions and
page-mapping errors, not to claim quality.

The output depends only on the PDFs (pinned by bench.manuals) and --n/--seed: headings that
recur in the collection or say nothing (Introduction, Examples, ...) are dropped, the rest
sampled per document with a fixed seed, and the question template is chosen by a hash of
the heading, so a rerun writes the same file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pymupdf

from bench.manuals import COLLECTIONS, FetchError, fetch

# Headings that could be in any manual: a question naming them has no single answer. Not listed although generic
# in prose: options, source, warning, license, copyright: R functions with their own reference entries.
_GENERIC = """
introduction, examples, example, usage, arguments, details, value, values, note, notes, references, see also,
description, overview, summary, contents, table of contents, short contents, index, preface, foreword,
acknowledgements, acknowledgments, acknowledgement, appendix, appendices, bibliography, list of figures,
list of tables, list of typeset examples, remarks, miscellaneous, other, others, general, background, conclusion,
conclusions, abstract, history, feedback, notation, glossary, changes, change history, author, authors, version,
installation, preamble, getting started, command summary, format, section, definition, definitions, caveats,
surprises, answers, other options, user's guide, reference guide, main reference, problem statement,
important recommendations, tips and tricks, the data, main text, general considerations, how tos, howtos, r code,
solution template, solution templates, terminology, resources, updating
"""

# Level-1 entries whose whole subtree is front or back matter (index letters, "Analphabetics", ...).
_BACK_MATTER = re.compile(r"^(?:(?:.* )?index(?: of .*)?|(?:short )?contents|list of .*|bibliography|references"
                          r"|command summary|notes)$")
_NUMBER = re.compile(r"^\s*(?:\d+(?:\.\d+)*|[A-Z](?:\.\d+)+)\.?\s+")
_LETTER = re.compile(r"^\s*(?:[A-Z]|[IVXL]+)\s+(?=[A-Z0-9`'\"])")  # "A Essential ...", "IV OpenType" (level 1)
_MARKS = re.compile(r"^[\s\u2020\u2021*]+")  # listings marks experimental sections with a dagger

PROSE = ("What does the manual say about {h}?", "Where is {h} explained?", "Tell me about {h}.",
         "Which section covers {h}?", "I need information on {h}.")
_ASKING = frozenset(("how", "what", "why", "which", "where", "when", "who", "can", "is", "are", "does", "do", "should"))
REFMAN = ("What does {h} do in R?", "How do I use {h} in R?", "What is {h} for in R?")
DATASETS = ("What is the {h} data set in R?", "What data does the {h} dataset in R hold?")


def clean(title: str, level: int) -> str:
    """The heading as a reader would say it: no section number, part/appendix letter or dagger."""
    h = _MARKS.sub("", " ".join(title.split()))
    numbered = _NUMBER.sub("", h)
    if numbered == h and level == 1:  # "1 R Internal Structures" keeps its R
        numbered = _LETTER.sub("", h)
    h = numbered
    return _MARKS.sub("", h).strip()


def key(heading: str) -> str:
    """Case, punctuation and spacing folded: "What is S-Plus?" and "What is S-PLUS?" are one heading."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", unicodedata.normalize("NFKC", heading).lower()).split())


GENERIC = frozenset(key(w) for w in _GENERIC.split(","))


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", unicodedata.normalize("NFKC", text).lower())


@dataclass(frozen=True)
class Heading:
    file: str
    title: str  # cleaned
    level: int
    page: int  # 1-based, as the outline says
    y: float | None  # top of the link target, top-down, when the outline gives one
    chapter: str  # the level-1 entry above it (itself at level 1)


def outline(path: Path) -> list[Heading]:
    """The outline's entries, front- and back-matter subtrees (index letters and the like) left out."""
    out: list[Heading] = []
    with pymupdf.open(path) as doc:
        skip_below: int | None = None
        chapter = ""
        for level, title, page, dest in doc.get_toc(simple=False):
            if skip_below is not None and level > skip_below:
                continue
            skip_below = None
            h = clean(title, level)
            if level == 1:
                chapter = h
            if level == 1 and _BACK_MATTER.match(key(h)):
                skip_below = level
                continue
            if page < 1:
                continue
            to = dest.get("to") if isinstance(dest, dict) else None
            # get_toc gives the target in PDF coordinates (origin bottom left); lines are top-down.
            y = doc[page - 1].rect.height - to.y if to is not None else None
            out.append(Heading(path.name, h, level, page, y, chapter))
    return out


def _refman_topic(h: Heading) -> bool:
    return h.file == "fullrefman.pdf" and h.level > 1


def eligible(h: Heading, counts: dict[str, int]) -> bool:
    """Not generic, not a bare number, and the only heading of its name in the collection."""
    k = key(h.title)
    return sum(c.isalpha() for c in h.title) >= 2 and k not in GENERIC and counts.get(k, 0) == 1


def vague(h: Heading, pages: list[str]) -> bool:
    """A one-word heading ("Graphics", "Factors", "The page") whose word is on more than 1% of the collection's pages
    (at least 20) names a topic, not a section: many pages would answer its question. R reference topics are names
    of functions and stay."""
    words = key(h.title).split()
    if words[:1] in (["the"], ["a"], ["an"]):
        words = words[1:]
    if len(words) != 1 or _refman_topic(h):
        return False
    phrase = f" {key(h.title)} "
    return sum(phrase in text for text in pages) > max(20, len(pages) // 100)


def _lines(page: pymupdf.Page) -> list[tuple[float, str]]:
    rows = [(line["bbox"][1], "".join(s["text"] for s in line["spans"]))
            for block in page.get_text("dict")["blocks"] for line in block.get("lines", [])]
    return sorted(rows)


def _heading_line(lines: list[tuple[float, str]], title: str, ymin: float = 0.0) -> bool:
    """A short line at or below ymin holding the heading (wrapped headings: joined with the next two lines)."""
    want = _squash(title)
    for i, (y, text) in enumerate(lines):
        if y < ymin:
            continue
        line = _squash(text)
        if not line or len(line) > len(want) + 40:
            continue
        joined = line + "".join(_squash(t) for _, t in lines[i + 1:i + 3])
        if want in line or joined.find(want) in range(12):
            return True
    return False


def locate(doc: pymupdf.Document, h: Heading) -> int | None:
    """The page the heading is printed on: the outline's page, or the next one when the outline points a page early;
    None when neither shows it."""
    page = doc[h.page - 1]
    lines = _lines(page)
    if h.y is not None and _heading_line(lines, h.title, h.y - 30):
        return h.page
    if _heading_line(lines, h.title):
        return h.page
    if h.page < doc.page_count and _heading_line(_lines(doc[h.page]), h.title):
        return h.page + 1
    if _squash(h.title) in _squash(page.get_text()):  # e.g. a logo typeset with shifted letters
        return h.page
    return None


def allocate(counts: dict[str, int], n: int, floor: int = 10) -> dict[str, int]:
    """n split over documents in proportion to their eligible headings, each given at least `floor` (or all it has)."""
    alloc: dict[str, int] = {}
    rest = {f: c for f, c in counts.items() if c > 0}
    budget = min(n, sum(rest.values()))
    while rest:
        total = sum(rest.values())
        quota = {f: budget * c / total for f, c in rest.items()}
        low = [f for f, q in quota.items() if q < min(floor, rest[f])]
        if not low:
            base = {f: int(q) for f, q in quota.items()}
            left = budget - sum(base.values())
            for f in sorted(quota, key=lambda f: (base[f] - quota[f], f))[:left]:
                base[f] += 1
            alloc.update(base)
            break
        for f in low:
            alloc[f] = min(floor, rest.pop(f))
            budget -= alloc[f]
    return {f: alloc.get(f, 0) for f in counts}


def _pick(title: str, templates: tuple[str, ...]) -> str:
    return templates[hashlib.sha256(title.encode()).digest()[0] % len(templates)]


def question(h: Heading) -> str:
    if h.title.endswith("?"):  # R-FAQ headings are questions already
        return h.title
    if key(h.title).split()[0] in _ASKING:  # "How can R be installed (Windows)"
        return h.title + "?"
    if not _refman_topic(h):
        return _pick(h.title, PROSE).format(h=h.title)
    return _pick(h.title, DATASETS if h.chapter == "The datasets package" else REFMAN).format(h=h.title)


def build(paths: list[Path], n: int = 150, seed: int = 0) -> tuple[list[dict[str, object]], dict[str, dict[str, int]]]:
    """The dev set's lines, in document and page order, and per-document counts for the log."""
    headings = {p.name: outline(p) for p in paths}
    counts: dict[str, int] = {}
    for hs in headings.values():
        for h in hs:
            counts[key(h.title)] = counts.get(key(h.title), 0) + 1
    pages: list[str] = []
    for path in paths:
        with pymupdf.open(path) as doc:
            pages += [f" {key(page.get_text())} " for page in doc]
    stats: dict[str, dict[str, int]] = {}
    located: dict[str, list[tuple[Heading, int]]] = {}
    for path in paths:
        ok: list[tuple[Heading, int]] = []
        moved = lost = 0
        with pymupdf.open(path) as doc:
            for h in headings[path.name]:
                if not eligible(h, counts) or vague(h, pages):
                    continue
                page = locate(doc, h)
                if page is None:
                    lost += 1
                    continue
                moved += page != h.page
                ok.append((h, page))
        located[path.name] = ok
        stats[path.name] = {"outline": len(headings[path.name]), "eligible": len(ok), "moved": moved, "lost": lost}
    alloc = allocate({f: len(v) for f, v in located.items()}, n)
    rows: list[dict[str, object]] = []
    for path in paths:
        rng = random.Random(f"{seed}:{path.name}")
        chosen = rng.sample(located[path.name], alloc[path.name])
        chosen.sort(key=lambda hp: hp[1])
        stats[path.name]["sampled"] = len(chosen)
        rows += [{"query": question(h), "file": h.file, "page": page} for h, page in chosen]
    return rows, stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.headings", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("collection", choices=sorted(COLLECTIONS))
    parser.add_argument("--out", type=Path, default=None, help="JSONL file to write (default: stdout)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="folder holding the collection's PDFs (default: bench.manuals' cache, fetched if needed)")
    parser.add_argument("--n", type=int, default=150, help="questions in all (default 150)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        paths = fetch(args.collection, args.dir)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows, stats = build(paths, args.n, args.seed)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    for name, s in stats.items():
        print(f"{name}: {s['outline']} outline entries, {s['eligible']} eligible, {s['sampled']} sampled, "
              f"{s['moved']} moved to the next page, {s['lost']} not found on their page", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
