"""Which sources an answer cites, and whether an answer that cites none is supported by them.

An answer's ``[n]`` markers name its citations (numbers with no such source are dropped).
An answer that cites nothing is checked sentence by sentence: a sentence is supported by a
source when most of its content words are in one of the sentences of that source the answer was
built from; the answer then cites those sources, or is flagged as unsupported.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from core.protocol import NOT_FOUND_ANSWER

if TYPE_CHECKING:
    from core.protocol import Source
    from workers.passages import Context

_CITATION: Final = re.compile(r"\[(\d+)\]")
_WORD: Final = re.compile(r"[\w'£€$%.,-]*\w")
_STOP: Final = frozenset(["a", "an", "the", "and", "or", "but", "of", "to", "in", "on", "at", "by", "for", "with", "from", "as", "is", "are", "was", "were", "be", "been", "being", "it", "its", "this", "that", "these", "those", "there", "their", "they", "them", "he", "she", "his", "her", "we", "our", "you", "your", "i", "not", "no", "do", "does", "did", "has", "have", "had", "will", "would", "can", "could", "may", "might", "shall", "should", "must", "which", "who", "whom", "what", "when", "where", "why", "how", "than", "then", "so", "such", "also", "into", "over", "under"])
#: Share of an answer sentence's content words that one source sentence must hold to support it.
SUPPORT_SHARE: Final = 0.6


def says_not_found(answer: str) -> bool:
    """The answer is (or starts with) the service's not-found wording, as a model asked to use it writes it."""
    wording = _words(NOT_FOUND_ANSWER)
    return _words(answer)[: len(wording)] == wording


def cite(answer: str, context: Context, sources: list[Source]) -> tuple[list[Source], bool]:
    """(the sources cited, supported?)."""
    numbers = {int(n) for n in _CITATION.findall(answer)}
    picked = [s for s in sources if s.n in numbers]
    if picked:
        return picked, True
    if not answer.strip() or says_not_found(answer):
        return [], True
    supporting: set[int] = set()
    pool = [(s.source.n, set(_words(s.text))) for s in context.sentences]
    for sentence in re.split(r"(?<=[.!?])\s+", answer):
        words = set(_words(sentence))
        if len(words) < 3:
            continue
        n, share = max(((n, len(words & held) / len(words)) for n, held in pool), key=lambda t: t[1],
                       default=(0, 0.0))
        if share >= SUPPORT_SHARE:
            supporting.add(n)
    picked = [s for s in sources if s.n in supporting]
    return picked, bool(picked)


def _words(text: str) -> list[str]:
    return [w for w in (m.group(0).lower().strip(".,") for m in _WORD.finditer(text)) if w and w not in _STOP]
