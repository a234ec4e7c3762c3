"""Ruled tables on a PDF page: grids read from the page's line art, extracted as markdown.

Ruled tables are what ``page.find_tables()`` finds with its default "lines" strategy, and
this module finds the same ones, from what the page's text page already holds: MuPDF's
vector blocks (one per axis-parallel piece of a drawn path, flagged stroked or filled and
whether the path goes on in the next block) and its words. The steps are find_tables'
own (pdfplumber's): path pieces become edges, connected paths get an enveloping frame,
edges snap and join, and the edges that cross form a table. Only a clean grid is read
here: every row rule crosses every column rule. Anything else (merged cells, broken
rules, curves or slanted lines touching a grid) is left to find_tables.

Written by hand for speed: find_tables re-extracts the page's drawings and characters into
Python objects (4.5 ms a table page, ten times get_text); this takes 0.25 ms, words included.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from heapq import heapify, heappop, heappush
from typing import Any, NamedTuple

import pymupdf
import structlog

log = structlog.get_logger("ingest.tables")

#: find_tables' defaults, used alike for snapping, joining and crossing edges, and its least edge length.
TOLERANCE = 3.0
#: MuPDF's box of a stroked line is the line widened by its line width all round: a stroked
#: piece this thin is a line of line width up to half of it (a rectangle drawn this thin is rare).
STROKED_LINE_MAX = 6.0
#: Pieces of line art past which a page that is no clean grid is not handed to find_tables: it takes
#: 0.3 s on a table of 1,000 cells with a merged one, 0.9 s on 2,000 (it grows with their square), and
#: seconds on a chart of a few thousand marks.
FIND_TABLES_MAX_PIECES = 1500
#: Paths (or curves) past which the ones near a box are looked up in a grid of buckets instead of
#: tried one by one (a table's rules are usually one path or a few; a chart's marks are thousands).
FEW_PATHS = 64

Rect = tuple[float, float, float, float]
Word = tuple[Any, ...]  # (x0, y0, x1, y1, text, block, line, word)
Edge = tuple[float, float, float]  # (position across, start, end along)


class Table(NamedTuple):
    bbox: Rect
    markdown: str


def grid_like(vectors: list[tuple], top: float, bottom: float) -> bool:  # type: ignore[type-arg]
    """At least three horizontal and two vertical rules (lines, or rectangle edges) in the body of
    the page (between ``top`` and ``bottom``): the least a ruled table has. Underlines, page frames,
    header or footer rules and the marks of a chart (small every way: no rule, no cell) are not
    worth looking for tables in."""
    horizontal: set[int] = set()
    vertical: set[int] = set()
    for vector in vectors:
        x0, y0, x1, y1 = vector[:4]
        if y1 <= top or y0 >= bottom or (y0 < top and y1 > bottom):
            continue  # in a margin, or a frame around the whole page
        w, h = x1 - x0, y1 - y0
        if h <= 3 and w > 8:
            horizontal.add(round(y0))
        elif w <= 3 and h > 8:
            vertical.add(round(x0))
        elif w > 3 and h > 3 and (w > 8 or h > 8):
            horizontal.update((round(y0), round(y1)))
            vertical.update((round(x0), round(x1)))
    return len(horizontal) >= 3 and len(vertical) >= 2


def find(page: pymupdf.Page, vectors: list[tuple], textpage: pymupdf.TextPage,  # type: ignore[type-arg]
         vector_blocks: bool = True, turn: pymupdf.Matrix | None = None) -> list[Table]:
    """The page's ruled tables as markdown (first row as header), top to bottom.

    ``vectors`` are the page's vector blocks (type 3 in ``extractBLOCKS``), or, where
    PyMuPDF has none (``vector_blocks`` false), the rectangles of its drawings. On a page
    with a /Rotate they come turned upright with ``turn`` (the page's rotation matrix), as
    find_tables sees the page: the text page's words are turned with it here.
    """
    words = _words_near(textpage, vectors) if turn is None else _turned_words(textpage, turn)
    art = _line_art(vectors) if vector_blocks else None
    frames = _frames(art.paths, words) if art is not None else []
    grids = _grids(art, frames) if art is not None else None
    if grids is None and len(vectors) > FIND_TABLES_MAX_PIECES:
        # find_tables joins touching paths in quadratic time: seconds a page past this (a map, a chart).
        log.info("table_search_skipped", page=page.number + 1, pieces=len(vectors),
                 reason="too much line art that is no clean grid; its text stays as text")
        grids = []
    elif grids is None:  # line art this module cannot vouch for: find_tables decides
        log.debug("find_tables_fallback", page=page.number + 1)
        grids = _find_tables(page, vectors, [box for box, exact in frames if exact])
    out = []
    for bbox, rows, rules in grids:
        text = markdown(rows, words, bbox, rules)
        if text:
            out.append(Table(bbox, text))
    return out


#: How far above and below the line art words are read: a word is cut short there only if it is
#: taller than this (see _words_near).
WORDS_MARGIN = 24.0


def _words_near(textpage: pymupdf.TextPage, vectors: list[tuple]) -> list[Word]:  # type: ignore[type-arg]
    """The words of the band of the page the line art spans (with a margin above and below).

    Only words there are used: tables and frames lie within the line art (find_tables' fallback
    too: it is clipped to it). extractWORDS keeps the characters that overlap the text page's
    rect, the clip a text page is made with: narrowing it to the band, for this one call, spares
    building every word of the page as a Python tuple (most of the page is prose around a table).
    It still walks every character, in C. Only the height is narrowed, so a word is cut short only
    when it sticks out of the band, which a word inside the band can only do by being taller than
    WORDS_MARGIN. PyMuPDF without that field (its older bindings) reads the whole page.
    """
    top = min(v[1] for v in vectors) - WORDS_MARGIN
    bottom = max(v[3] for v in vectors) + WORDS_MARGIN
    try:
        stext = textpage.this.m_internal
        saved = stext.mediabox
        page_box = (saved.x0, saved.y0, saved.x1, saved.y1)
    except AttributeError:
        return textpage.extractWORDS()  # type: ignore[no-any-return]
    if top <= page_box[1] and bottom >= page_box[3]:
        return textpage.extractWORDS()  # type: ignore[no-any-return]
    band = pymupdf.mupdf.fz_rect()
    band.x0, band.x1 = page_box[0], page_box[2]
    band.y0, band.y1 = max(top, page_box[1]), min(bottom, page_box[3])
    stext.mediabox = band
    try:
        return textpage.extractWORDS()  # type: ignore[no-any-return]
    finally:
        restored = pymupdf.mupdf.fz_rect()
        restored.x0, restored.y0, restored.x1, restored.y1 = page_box
        stext.mediabox = restored


def turned(box: tuple[float, ...], turn: pymupdf.Matrix) -> Rect:
    """A box of the unrotated page in the coordinates of the page as shown (``turn``: its rotation matrix)."""
    r = pymupdf.Rect(box) * turn
    return r.x0, r.y0, r.x1, r.y1


def _turned_words(textpage: pymupdf.TextPage, turn: pymupdf.Matrix) -> list[Word]:
    """Every word of a rotated page, in the coordinates of the page as shown (rare: no band here)."""
    return [(*turned(word[:4], turn), *word[4:]) for word in textpage.extractWORDS()]


class Grid(NamedTuple):
    bbox: Rect
    rows: list[list[Rect | None]]  # rows of cells (None where a merged cell spans)
    #: A clean grid's column and row rules (x and y, ascending); None for find_tables' tables.
    rules: tuple[list[float], list[float]] | None = None


class _Art(NamedTuple):
    horizontal: list[Edge]  # (y, x0, x1)
    vertical: list[Edge]  # (x, y0, y1)
    #: The box of each drawn path, and whether it is exact (no curved or slanted piece).
    paths: list[tuple[Rect, bool]]
    #: Pieces that are not axis-parallel (curves, slanted lines): their straight parts are unknown here.
    opaque: list[Rect]


def _grids(art: _Art, frames: list[tuple[Rect, bool]]) -> list[Grid] | None:
    """Each clean ruled grid as find_tables would find it, top to bottom; None where some of
    the line art is not a clean grid."""
    horizontal, vertical = list(art.horizontal), list(art.vertical)
    for (x0, y0, x1, y1), _ in frames:
        horizontal += [(y0, x0, x1), (y1, x0, x1)]
        vertical += [(x0, y0, y1), (x1, y0, y1)]
    horizontal, vertical = _merge(horizontal), _merge(vertical)
    grids: list[Grid] = []
    t = TOLERANCE
    opaque = art.opaque
    near = _Buckets(opaque) if len(opaque) > FEW_PATHS else None  # (a chart's curves, a map's outlines)
    for hs, vs in _crossing(horizontal, vertical):
        ys = [y for y, _, _ in hs]
        xs = [x for x, _, _ in vs]
        left = min([x0 for _, x0, _ in hs] + xs)
        right = max([x1 for _, _, x1 in hs] + xs)
        top = min([y0 for _, y0, _ in vs] + ys)
        bottom = max([y1 for _, _, y1 in vs] + ys)
        if any(ox0 <= right + t and ox1 >= left - t and oy0 <= bottom + t and oy1 >= top - t
               for ox0, oy0, ox1, oy1 in (opaque if near is None else
                                          [opaque[k] for k in near.around([left, top, right, bottom])])):
            return None  # a curve or slanted piece touches it: its straight parts may be edges too
        if len(hs) < 2 or len(vs) < 2:
            continue  # no cell
        top, bottom, left, right = ys[0], ys[-1], xs[0], xs[-1]
        if (len(set(ys)) < len(ys) or len(set(xs)) < len(xs)
                or any(x0 > left + t or x1 < right - t for _, x0, x1 in hs)
                or any(y0 > top + t or y1 < bottom - t for _, y0, y1 in vs)):
            return None  # merged cells or broken rules
        if len(xs) < 3:
            continue  # find_tables drops one-column tables (and empty ones: their markdown is empty)
        rows: list[list[Rect | None]] = [[(xs[c], ys[r], xs[c + 1], ys[r + 1]) for c in range(len(xs) - 1)]
                                         for r in range(len(ys) - 1)]
        grids.append(Grid((left, top, right, bottom), rows, (xs, ys)))
    grids.sort(key=lambda g: (g[0][1], g[0][0]))
    return grids


def _line_art(vectors: list[tuple]) -> _Art | None:  # type: ignore[type-arg]
    """The edges and paths of the page's vector blocks; None if one is not in the form this reads.

    The edges are find_tables' (make_edges): a thin piece is a line through its middle, any
    other piece a rectangle with four edges, filled or stroked alike.
    """
    horizontal: list[Edge] = []
    vertical: list[Edge] = []
    paths: list[tuple[Rect, bool]] = []
    opaque: list[Rect] = []
    bx0 = by0 = bx1 = by1 = 0.0  # the box of the path so far (open: it has a piece)
    open_path, exact = False, True
    for vector in vectors:
        x0, y0, x1, y1, text = vector[:5]
        # e.g. "\n<vector stroked, color: #808080, alpha: 255, is-rect: true, continues: false>\n"
        if "is-rect: true" in text:
            w, h = x1 - x0, y1 - y0
            if "stroked" in text and (w if w < h else h) <= STROKED_LINE_MAX:
                e = (w if w < h else h) / 2
                x0, y0, x1, y1, w, h = x0 + e, y0 + e, x1 - e, y1 - e, w - 2 * e, h - 2 * e
            if w <= TOLERANCE and w < h:
                vertical.append(((x0 + x1) / 2, y0, y1))
            elif h <= TOLERANCE and h < w:
                horizontal.append(((y0 + y1) / 2, x0, x1))
            else:
                horizontal += [(y0, x0, x1), (y1, x0, x1)]
                vertical += [(x0, y0, y1), (x1, y0, y1)]
        elif "is-rect: false" in text:
            opaque.append((x0, y0, x1, y1))
            exact = False
        else:
            return None
        if not open_path:
            bx0, by0, bx1, by1, open_path = x0, y0, x1, y1, True
        else:
            bx0, by0 = (x0 if x0 < bx0 else bx0), (y0 if y0 < by0 else by0)
            bx1, by1 = (x1 if x1 > bx1 else bx1), (y1 if y1 > by1 else by1)
        if "continues: true" not in text:
            paths.append(((bx0, by0, bx1, by1), exact))
            open_path, exact = False, True
    if open_path:  # a path cut off mid-way
        paths.append(((bx0, by0, bx1, by1), exact))
    return _Art(horizontal, vertical, paths, opaque)


def _neighbours(a: list[float], b: Rect) -> bool:
    """find_tables' test (make_edges.are_neighbors): a corner coordinate of one rectangle lies
    within the other's ranges, widened by the tolerance, along both axes."""
    t = TOLERANCE
    return (((b[0] - t <= a[0] <= b[2] + t or b[0] - t <= a[2] <= b[2] + t)
             and (b[1] - t <= a[1] <= b[3] + t or b[1] - t <= a[3] <= b[3] + t))
            or ((a[0] - t <= b[0] <= a[2] + t or a[0] - t <= b[2] <= a[2] + t)
                and (a[1] - t <= b[1] <= a[3] + t or a[1] - t <= b[3] <= a[3] + t)))


def _frames(paths: list[tuple[Rect, bool]], words: list[Word]) -> list[tuple[Rect, bool]]:
    """find_tables' frames (make_edges.clean_graphics): paths that touch are joined, and the box
    of each joined group that holds a word becomes four edges, so a grid without an outer
    border still has one. With whether the box is exact (no curve among its paths).

    The groups are find_tables' own: from the first path left (by bottom, then left), the box
    grows by every later path that touches it (are_neighbors), scanned last to first and again
    while it grows. Only paths near the box can touch it: past FEW_PATHS they are looked up in a
    grid of buckets instead of tried one by one (a chart of thousands of marks would take seconds a
    page), and the words by their top.

    (find_tables' own test compares the box with the characters' PDF-space y, upside down:
    this one uses the words' page coordinates.)
    """
    groups = sorted(paths, key=lambda p: (p[0][3], p[0][0]))
    many = len(groups) > FEW_PATHS
    near = _Buckets([r for r, _ in groups]) if many else None
    alive = [True] * len(groups)
    by_top = sorted(words, key=lambda w: w[1]) if many else words
    tops = [w[1] for w in by_top] if many else []
    out: list[tuple[Rect, bool]] = []
    for seed, (first, exact) in enumerate(groups):
        if not alive[seed]:
            continue
        alive[seed] = False
        box = list(first)
        grown = True
        while grown:
            grown = False
            # A max-heap of the paths after the seed to try, last first: those near the box, and those
            # near it once it has grown (before the one that grew it: later ones wait for the next round).
            todo = [-i for i in (near.around(box) if near is not None else range(seed + 1, len(groups)))
                    if i > seed and alive[i]]
            heapify(todo)
            queued = set(todo)
            while todo:
                i = -heappop(todo)
                r, r_exact = groups[i]
                if _neighbours(box, r):
                    before = box
                    box = [min(box[0], r[0]), min(box[1], r[1]), max(box[2], r[2]), max(box[3], r[3])]
                    exact = exact and r_exact
                    alive[i] = False
                    grown = True
                    for j in near.around(box, before) if near is not None else ():
                        if seed < j < i and alive[j] and -j not in queued:
                            queued.add(-j)
                            heappush(todo, -j)
        x0, y0, x1, y1 = box
        if x1 - x0 < TOLERANCE or y1 - y0 < TOLERANCE:
            continue  # a lone rule: no word fits in it, and its frame would be itself
        for k in range(bisect_left(tops, y0), bisect_right(tops, y1)) if many else range(len(by_top)):
            w = by_top[k]
            if x0 <= w[0] and w[2] <= x1 and y0 <= w[1] and w[3] <= y1:
                out.append(((x0, y0, x1, y1), exact))
                break
    return out


class _Buckets:
    """Boxes by the squares of a grid they overlap (widened by the tolerance): those near a box, fast."""

    SIZE = 32.0

    def __init__(self, boxes: list[Rect]) -> None:
        self.cells: dict[tuple[int, int], list[int]] = {}
        for i, box in enumerate(boxes):
            for cell in self._cells(box):
                self.cells.setdefault(cell, []).append(i)

    def _cells(self, box: Rect | list[float]) -> Iterator[tuple[int, int]]:
        t, size = TOLERANCE, self.SIZE
        xs = range(int((box[0] - t) // size), int((box[2] + t) // size) + 1)
        for y in range(int((box[1] - t) // size), int((box[3] + t) // size) + 1):
            for x in xs:
                yield x, y

    def around(self, box: list[float], before: list[float] | None = None) -> set[int]:
        """The boxes within the tolerance of ``box`` (and a few more, from the same squares); with
        ``before`` (a box inside it), only those near the part of ``box`` outside ``before``: the
        strips it grew by (a whole table's boxes again at every growth would take quadratic time)."""
        if before is None:
            areas = [box]
        else:
            (x0, y0, x1, y1), (bx0, by0, bx1, by1) = box, before
            areas = [area for area, grew in (([x0, y0, bx0, y1], x0 < bx0), ([bx1, y0, x1, y1], x1 > bx1),
                                             ([bx0, y0, bx1, by0], y0 < by0), ([bx0, by1, bx1, y1], y1 > by1)) if grew]
        found: set[int] = set()
        for area in areas:
            for cell in self._cells(area):
                found.update(self.cells.get(cell, ()))
        return found


def _merge(edges: list[Edge]) -> list[Edge]:
    """find_tables' merge_edges for edges of one orientation: positions within the tolerance of
    the next snap to their mean, pieces on one line within the tolerance of each other join,
    and edges shorter than the tolerance go."""
    edges.sort()
    out: list[Edge] = []
    i, n = 0, len(edges)
    while i < n:
        j = i + 1
        while j < n and edges[j][0] <= edges[j - 1][0] + TOLERANCE:
            j += 1
        if j == i + 1:  # a rule drawn once (most are): nothing to snap or join
            if edges[i][2] - edges[i][1] >= TOLERANCE:
                out.append(edges[i])
            i = j
            continue
        pos = sum(e[0] for e in edges[i:j]) / (j - i)
        spans = sorted((lo, hi) for _, lo, hi in edges[i:j])
        lo, hi = spans[0]
        for a, b in spans[1:]:
            if a > hi + TOLERANCE:
                if hi - lo >= TOLERANCE:
                    out.append((pos, lo, hi))
                lo, hi = a, b
            elif b > hi:
                hi = b
        if hi - lo >= TOLERANCE:
            out.append((pos, lo, hi))
        i = j
    return out


def _crossing(horizontal: list[Edge], vertical: list[Edge]) -> list[tuple[list[Edge], list[Edge]]]:
    """Groups of horizontal and vertical edges connected by crossings (within the tolerance,
    as find_tables' edges_to_intersections), each sorted by position."""
    parent = list(range(len(horizontal) + len(vertical)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    n = len(horizontal)
    t = TOLERANCE
    xs = [x for x, _, _ in vertical]  # sorted: _merge returns edges by position
    for i, (y, hx0, hx1) in enumerate(horizontal):
        # A horizontal edge joins the group of each vertical one it crosses: until the first, it is
        # its own root (only earlier groups' roots have been joined). Only the vertical edges within
        # its reach can cross it. (Roots are found inline: a call per crossing is most of the time.)
        r = i
        for j in range(bisect_left(xs, hx0 - t), bisect_right(xs, hx1 + t)):
            _, vy0, vy1 = vertical[j]
            if vy0 <= y + t and vy1 >= y - t:
                rj = n + j
                while parent[rj] != rj:
                    parent[rj] = rj = parent[parent[rj]]
                if rj != r:
                    parent[r] = r = rj
    groups: dict[int, tuple[list[Edge], list[Edge]]] = {}
    for i, edge in enumerate(horizontal):
        groups.setdefault(root(i), ([], []))[0].append(edge)
    for j, edge in enumerate(vertical, start=n):
        groups.setdefault(root(j), ([], []))[1].append(edge)
    return list(groups.values())


def _find_tables(page: pymupdf.Page, vectors: list[tuple], frames: list[Rect]) -> list[Grid]:  # type: ignore[type-arg]
    """find_tables' grids; ``frames`` are added as boxes (see _frames)."""
    clip = pymupdf.Rect(vectors[0][:4])
    for vector in vectors[1:]:
        clip |= vector[:4]
    clip += (-2, -2, 2, 2)  # only where the line art is: find_tables reads every character in its clip
    try:
        try:
            # Without PyMuPDF 2's layout model (onnx, 30x slower; ruled tables need none of it).
            found = page.find_tables(clip=clip, use_layout=False, add_boxes=frames or None)
        except TypeError:  # PyMuPDF 1.x: no layout model, no such argument
            found = page.find_tables(clip=clip)
    except (RuntimeError, ValueError, IndexError, KeyError) as exc:  # a malformed drawing must not lose the page
        log.info("find_tables_failed", page=page.number + 1, error=str(exc))
        return []
    if found is None:  # PyMuPDF 2 reports its own failures as None
        return []
    return [Grid(tuple(t.bbox), [list(row.cells) for row in t.rows]) for t in found.tables]


def markdown(rows: list[list[Rect | None]], words: list[Word], box: Rect,
             rules: tuple[list[float], list[float]] | None = None) -> str:
    """The table as markdown, first row as header, from the page's words placed into its cells.

    Each word goes into the cell that holds its centre (on a rule: the cell left of or below it). A clean
    grid's ``rules`` find that cell by bisection; other tables' cells are searched row by row.
    (Table.to_markdown() builds a text page per cell: ten times slower.)
    """
    if not rows:
        return ""
    bx0, by0, bx1, by1 = box
    cells: list[list[list[str]]] = [[[] for _ in row] for row in rows]
    # Only centres inside the table count (most of the words are outside).
    centres = [(cx, cy, w[4]) for w in words
               if bx0 <= (cx := (w[0] + w[2]) / 2) <= bx1 and by0 <= (cy := (w[1] + w[3]) / 2) <= by1]
    if rules is not None:
        xs, ys = rules
        last_row, last_col = len(ys) - 2, len(xs) - 2
        for cx, cy, text in centres:
            r = bisect_right(ys, cy) - 1
            cells[r if r < last_row else last_row][max(0, min(bisect_left(xs, cx) - 1, last_col))].append(text)
    else:
        tops = [min((c[1] for c in row if c), default=by1) for row in rows]
        order = sorted(range(len(rows)), key=tops.__getitem__)
        sorted_tops = [tops[i] for i in order]
        for cx, cy, text in centres:
            k = bisect_right(sorted_tops, cy) - 1
            if k < 0:
                continue
            r = order[k]
            for c, cell in enumerate(rows[r]):
                if cell and cell[0] <= cx <= cell[2] and cell[1] <= cy <= cell[3]:
                    cells[r][c].append(text)
                    break
    if not any(any(row) for row in cells):
        return ""
    lines = ["|" + "|".join(" ".join(cell).replace("|", "\\|") for cell in row) + "|" for row in cells]
    width = len(rows[0])
    return "\n".join([lines[0], "|" + "---|" * width, *lines[1:]])
