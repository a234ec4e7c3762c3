"""Shared by app, workers and ingest: settings, the stream protocol, key names, Redis, logging."""
