"""Comparing headings with the text they head: one normalization for ingest and the stores' migrations."""

from __future__ import annotations

import re

_NUMBERING = re.compile(
    r"^\s*(?:(?:chapter|section|part|appendix)\s+)?(?:\d+|[ivxlc]+|[a-z])(?:\.\d+)*\.?(?=\s|:|$)[\s:]*", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Whitespace collapsed, a leading section number ("3.2.1", "Chapter 4:", "A.2") dropped, casefolded."""
    return unnumbered(text).casefold()


def unnumbered(heading: str) -> str:
    """A heading without its number ("12.6.1 Changing the appearance" -> "Changing the appearance"):
    outlines keep it in some documents and not in others, questions never say it."""
    return _NUMBERING.sub("", _SPACES.sub(" ", heading).strip(), count=1)


def starts_with_heading(text: str, heading: str) -> bool:
    """The text begins with the heading (its number and case aside): the chunk a section starts with."""
    wanted = normalize(heading)
    return bool(wanted) and normalize(text[: len(heading) + 40]).startswith(wanted)
