"""``python -m app``: serve the API with uvicorn on RAG_API_HOST:RAG_API_PORT."""

from __future__ import annotations

import sys

import uvicorn

from core.settings import SettingsError, load_settings


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from app.main import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.api.host,
        port=settings.api.port,
        log_level=settings.log_level,
        # Uvicorn would otherwise wait forever for open SSE streams on shutdown.
        timeout_graceful_shutdown=5,
    )
    return 0
