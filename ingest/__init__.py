"""Ingestion: PDFs in, page-numbered chunks out, sent to the workers over the ingest stream."""
