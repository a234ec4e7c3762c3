"""The web page at ``/``: one static HTML file (its script and style inline), no build step, nothing from outside.

It speaks the service's own API: questions as jobs whose events stream over SSE (EventSource,
resumed with Last-Event-ID by the browser itself), uploads, the documents' list, deletes, and
each source's page text.
"""

from __future__ import annotations

import functools
from pathlib import Path

from litestar import MediaType, Response, get

PAGE = Path(__file__).parent / "static" / "index.html"


@functools.cache
def _page() -> bytes:
    return PAGE.read_bytes()


@get("/", include_in_schema=False, media_type=MediaType.HTML)
async def index() -> Response[bytes]:
    return Response(_page(), media_type=MediaType.HTML, headers={"Cache-Control": "no-cache"})
