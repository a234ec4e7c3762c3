"""PyMuPDF as ingest uses it, set up to stay small: imported first (by ``ingest/__init__.py``), before
anything of ingest imports PyMuPDF.

* PyMuPDF 2's own ``__init__`` imports ``pymupdf.layout``, which loads an ONNX layout model, and
  ``pymupdf4llm`` (onnxruntime, numpy): 93 MiB resident that ingest never uses (it reads text blocks and
  line art). They are kept out of that import (either can still be imported explicitly later), and what
  importing pymupdf4llm sets for the whole process is set here instead, so pages read the same: character
  boxes without ascender/descender corrections, MuPDF's errors not printed (they are raised).
* PyMuPDF 2.0's ``TextPage.extractBLOCKS`` keeps one reference too many to every block it returns, so
  every block (its text and coordinates) lives until the process ends: 16 MiB over a 2,415-page manual,
  more with every page. :func:`blocks` drops that reference, when the probe at import finds it.
"""

from __future__ import annotations

import ctypes
import sys
from importlib.util import find_spec
from typing import Any

_UNUSED = ("pymupdf.layout", "pymupdf4llm")
_blocked = [] if "pymupdf" in sys.modules else [name for name in _UNUSED if name not in sys.modules]
for _name in _blocked:
    sys.modules[_name] = None  # type: ignore[assignment]  # `import _name` raises ImportError
try:
    import pymupdf
finally:
    for _name in _blocked:
        if _name in sys.modules and sys.modules[_name] is None:
            del sys.modules[_name]

if "pymupdf4llm" in _blocked and hasattr(pymupdf, "pymupdf4llm") and find_spec("pymupdf4llm") is not None:
    # What importing pymupdf4llm would have set for the whole process.
    pymupdf.TOOLS.unset_quad_corrections(True)
    pymupdf.TOOLS.mupdf_display_errors(False)
if hasattr(pymupdf, "no_recommend_layout"):
    pymupdf.no_recommend_layout()  # else find_tables() prints a tip about pymupdf_layout on stdout

_decref = ctypes.pythonapi.Py_DecRef
_decref.argtypes = [ctypes.py_object]
_decref.restype = None


def _leaks_blocks() -> bool:
    """Whether extractBLOCKS returns its blocks with a reference too many (PyMuPDF 2.0)."""
    with pymupdf.open() as doc:
        page = doc.new_page()
        page.insert_text((72, 72), "probe")
        found = page.get_textpage().extractBLOCKS()
    return bool(found) and sys.getrefcount(found[0]) > 2  # the list's reference and getrefcount's argument


LEAKS_BLOCKS = _leaks_blocks()


def blocks(textpage: pymupdf.TextPage) -> list[tuple[Any, ...]]:
    """``textpage.extractBLOCKS()``, its blocks freed with the list."""
    found: list[tuple[Any, ...]] = textpage.extractBLOCKS()
    if LEAKS_BLOCKS:
        for block in found:
            _decref(block)
    return found
