"""Ingestion: PDFs in, page-numbered chunks out, sent to the workers over the ingest stream."""

from ingest import pdflib  # noqa: F401  (first: PyMuPDF without the layout model it would load; see pdflib)
