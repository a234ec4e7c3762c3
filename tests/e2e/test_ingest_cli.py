"""``python -m ingest`` as a real process against a real worker: JSON lines, exit codes, re-ingest, delete."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests import ingest_pdfs as make
from tests.pdfs import FACTS, write_pdf

ROOT = Path(__file__).parents[2]


def ingest(service, *args: str) -> tuple[int, list[dict[str, Any]], str]:  # type: ignore[no-untyped-def]
    run = subprocess.run([sys.executable, "-m", "ingest", *args], env=service.env, check=False, capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return run.returncode, lines, run.stderr


def test_cli_batch_reingest_and_delete(service_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    service = service_factory(ingest_chunk_words="40", ingest_overlap_words="5", ingest_ocr="false")
    folder = tmp_path / "library"
    folder.mkdir()
    good = write_pdf(folder / "facts.pdf", {p: t * 2 for p, t in FACTS.items()})
    make.encrypted(folder / "locked.pdf")
    make.not_a_pdf(folder / "notes.pdf")

    code, lines, stderr = ingest(service, "--json", str(folder))
    assert code == 1, stderr  # some files failed: non-zero, the good one is indexed anyway
    files = {Path(r["path"]).name: r for r in lines if r["event"] == "file"}
    assert {n: (r["status"], r["code"]) for n, r in files.items()} == {
        "facts.pdf": ("sent", None), "locked.pdf": ("failed", "pdf_encrypted"), "notes.pdf": ("failed", "not_a_pdf")}
    progress = [r for r in lines if r["event"] == "progress"]
    assert progress[-1]["chunks_indexed"] == progress[-1]["chunks_sent"] == files["facts.pdf"]["chunks"]
    assert progress[-1]["pages"] == 4
    summary = lines[-1]
    assert summary["event"] == "summary" and summary["failed"] == 2 and summary["files"] == 3

    code, lines, _ = ingest(service, "--json", str(good))
    assert code == 0 and [r["status"] for r in lines if r["event"] == "file"] == ["unchanged"]

    # The human output: a summary table, the unchanged note.
    run = subprocess.run([sys.executable, "-m", "ingest", str(good)], env=service.env, check=False, capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0 and "ingest summary" in run.stderr and "unchanged" in run.stderr

    code, lines, _ = ingest(service, "--json", "--list")
    assert code == 0 and [(r["file"], r["status"], r["chunks"]) for r in lines] == [
        ("facts.pdf", "ready", files["facts.pdf"]["chunks"])]

    code, lines, _ = ingest(service, "--json", "--delete", str(good))
    assert code == 0 and lines == [{"event": "delete", "target": str(good), "status": "deleted",
                                    "document_id": files["facts.pdf"]["document_id"],
                                    "chunks": files["facts.pdf"]["chunks"]}]
    code, lines, _ = ingest(service, "--json", "--delete", "0" * 32)
    assert code == 1 and lines[0]["code"] == "document_not_found"


def test_reindex_reads_every_document_again_and_names_the_ones_whose_file_is_gone(  # type: ignore[no-untyped-def]
        service_factory, tmp_path: Path) -> None:
    service = service_factory(ingest_ocr="false")
    kept = make.manual(tmp_path / "manual.pdf")
    gone = write_pdf(tmp_path / "facts.pdf", FACTS)
    code, lines, stderr = ingest(service, "--json", "--collection", "docs", str(kept), str(gone))
    assert code == 0, stderr
    before = {Path(r["path"]).name: r for r in lines if r["event"] == "file"}
    assert before["manual.pdf"]["nav_pages"] == [2, 8]  # its contents and index pages, left out
    gone.unlink()

    code, lines, stderr = ingest(service, "--json", "--reindex")
    assert code == 1, stderr  # one source is gone
    files = {Path(r["path"]).name: r for r in lines if r["event"] == "file"}
    assert files["manual.pdf"]["status"] == "sent"  # read again although unchanged
    assert files["manual.pdf"]["chunks"] == before["manual.pdf"]["chunks"]
    assert (files["facts.pdf"]["status"], files["facts.pdf"]["code"]) == ("failed", "file_not_found")
    code, lines, _ = ingest(service, "--json", "--list", "--collection", "docs")
    assert sorted((r["file"], r["status"]) for r in lines) == [("facts.pdf", "ready"), ("manual.pdf", "ready")]
