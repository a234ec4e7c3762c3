"""PDFs the tests generate with PyMuPDF: known text on known pages."""

from __future__ import annotations

from pathlib import Path

import pymupdf

FACTS = {
    1: "The Zephyr turbine generates electricity from ocean tides near the Orkney islands. " * 4,
    2: "Photosynthesis in kelp forests converts sunlight into chemical energy stored as sugars. " * 4,
    3: "The Helios compiler translates Pascal programs into WebAssembly modules in a single pass. " * 4,
    4: "Marmalade production in Seville depends on bitter oranges harvested every January. " * 4,
}


def write_pdf(path: Path, pages: dict[int, str] | None = None, title: str = "Test facts") -> Path:
    doc = pymupdf.open()
    for _, text in sorted((pages or FACTS).items()):
        page = doc.new_page()
        page.insert_textbox(pymupdf.Rect(50, 50, 550, 800), text, fontsize=11)
    doc.set_metadata({"title": title})
    doc.save(path)
    doc.close()
    return path
