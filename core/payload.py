"""A chunk's point in the vector store: its payload, and the names searches filter on.

One definition for the indexer that writes it, the stores that filter and migrate on it,
and the answers that read it back.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec
from msgspec import Struct

from core.errors import BadRequest
from core.text import starts_with_heading

#: The collection of a question or an upload that names none.
DEFAULT_COLLECTION: Final = "default"
#: What a collection may be called (ingest and the API check it; see staging()).
COLLECTION_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
COLLECTION_NAME_RULE: Final = "1 to 64 letters, digits, '_' or '-'"


def collection_name(value: str | None) -> str:
    """The collection a request names, the default when it names none; BadRequest for a name not allowed."""
    if not value:
        return DEFAULT_COLLECTION
    if not COLLECTION_NAME.fullmatch(value):
        raise BadRequest(f"collection: {COLLECTION_NAME_RULE}", code="invalid_collection")
    return value

#: Payload keys that searches, publishing and deleting filter on (each has a payload index).
COLLECTION: Final = "collection"
DOCUMENT_ID: Final = "document_id"
INDEX: Final = "index"
#: The payload key of a chunk's section heading (the heading match reads it).
SECTION: Final = "section"
#: The ``kind`` of a chunk of a table of contents, an index or a list of figures (RAG_INGEST_NAV_PAGES=keep).
NAV_KIND: Final = "nav"

#: The names of a point's vectors: the embedder's (Qdrant's unnamed default), BM25's over the chunk's
#: indexed text, and BM25's over its section heading (on the chunk each section starts with only).
DENSE: Final = ""
SPARSE: Final = "bm25"
HEADING: Final = "heading"


def staging(collection: str) -> str:
    """The hidden ``collection`` value of a document's points until it is published.

    A collection's name matches COLLECTION_NAME, so this value never names a real collection
    and no query searches it.
    """
    return f"~staging:{collection}"


class ChunkPayload(Struct, kw_only=True, omit_defaults=True):
    collection: str
    document_id: str
    file: str
    title: str = ""
    page: int
    page_end: int
    #: The chunk's position in its document.
    index: int
    #: The deepest outline entry (or detected heading) the chunk is under.
    section: str | None = None
    #: The page text, shown to users as the snippet.
    text: str
    #: The contextual header indexed with the text by both arms: document title and section path.
    context: str = ""
    #: ``nav``: a table of contents, an index or a list of figures, not content.
    kind: str = "content"
    #: The chunk's position in its section: 0 for the chunk the section starts with.
    part: int = 0

    def indexed_text(self) -> str:
        return indexed_text(self.context, self.text)


def indexed_text(context: str, text: str) -> str:
    """What both arms index: the contextual header, then the text."""
    return f"{context}\n{text}" if context else text


def starts_section(payload: dict[str, Any]) -> bool:
    """The chunk a section starts with. Points of schema 1 kept no position in the section (nor a
    ``context``): there it is the chunk whose text begins with the section's heading."""
    if "context" in payload:
        return bool(payload.get("section")) and payload.get("part", 0) == 0  # 0 is left out when stored
    return starts_with_heading(str(payload.get("text", "")), str(payload.get("section") or ""))


def legacy_context(payload: dict[str, Any]) -> str:
    """The header of a point indexed before chunks carried one (title and section, as they were kept)."""
    return " > ".join(p for p in (payload.get("title") or "", payload.get("section") or "") if p)


_to_dict = msgspec.to_builtins


def payload_dict(payload: ChunkPayload) -> dict[str, Any]:
    return _to_dict(payload)  # type: ignore[no-any-return]


#: What a stored payload lacks reads as empty (a point written by hand, or by an older release).
_EMPTY: Final = {"collection": "", "document_id": "", "file": "", "page": 0, "index": 0, "text": ""}


def read_payload(raw: dict[str, Any]) -> ChunkPayload:
    """A stored payload, old points (without ``context`` or ``nav``) included; a chunk without a
    ``page_end`` ends on its ``page``."""
    return msgspec.convert({**_EMPTY, "page_end": raw.get("page", 0), **raw}, ChunkPayload, strict=False)
