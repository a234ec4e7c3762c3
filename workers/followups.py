"""Follow-up questions made standalone for retrieval: by the LLM where there is one, else by a rule.

A question asked after others ("and by when must it be notified?") names little of what it is
about; searched alone, it finds the wrong passage. The rule needs no model: the question, then
in brackets the salient terms of the earlier questions, the most recent first (words that are
no stopword to BM25 and not already in the question, at most ``rule_terms``). With an LLM, a
short prompt asks it to rewrite the question as one that stands alone, within
``rewrite_tokens`` and ``rewrite_timeout_s``; a reply that is empty, too long or a refusal, a
timeout or an error gives the rule's form instead. Assistant turns are shown to the LLM (cut
short), never mined by the rule: they quote documents at length, and their words drown the
question's.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Final

import structlog

if TYPE_CHECKING:
    from core.protocol import Query, Turn
    from core.settings import ConversationSettings
    from workers.generator import Generator
    from workers.sparse import Bm25Encoder

log = structlog.get_logger("workers.followups")

_WORD = re.compile(r"[^\W_][\w'’-]*")
#: An assistant turn shown to the rewriting LLM is cut to this many characters: enough to name its subject.
ASSISTANT_CHARS: Final = 300
#: A rewrite longer than this many times the question (plus a sentence) has wandered off.
MAX_GROWTH: Final = 3

REWRITE_PROMPT: Final = (
    "Rewrite the user's last question so that it can be understood without the conversation: name the "
    "people, documents, things and dates it refers to. Keep its meaning; do not answer it. Reply with the "
    "rewritten question only, on one line."
)


def salient_terms(bm25: Bm25Encoder, question: str, history: list[Turn], limit: int) -> list[str]:
    """Words of the earlier user turns, most recent turn first, that BM25 does not drop as stopwords and
    that the question does not already hold (by BM25 token, so "notices" and "notice" are one)."""
    held = set(_ids(bm25, question))
    terms: list[str] = []
    for turn in reversed(history):
        if turn.role != "user":
            continue
        for word in _WORD.findall(turn.content):
            ids = _ids(bm25, word)
            if not ids or held.issuperset(ids):
                continue
            held.update(ids)
            terms.append(word)
            if len(terms) >= limit:
                return terms
    return terms


def _ids(bm25: Bm25Encoder, text: str) -> list[int]:
    vector = bm25.query(text)
    return vector.indices if vector is not None else []


def by_rule(bm25: Bm25Encoder, question: str, history: list[Turn], limit: int) -> str:
    terms = salient_terms(bm25, question, history, limit)
    return f"{question} ({' '.join(terms)})" if terms else question


def rewrite_messages(question: str, history: list[Turn]) -> list[dict[str, str]]:
    lines = []
    for turn in history:
        text = " ".join(turn.content.split())
        if turn.role == "assistant" and len(text) > ASSISTANT_CHARS:
            text = text[:ASSISTANT_CHARS].rsplit(" ", 1)[0] + " …"
        lines.append(f"{'User' if turn.role == 'user' else 'Assistant'}: {text}")
    lines.append(f"User: {question}")
    conversation = "\n".join(lines)
    return [{"role": "system", "content": REWRITE_PROMPT},
            {"role": "user", "content": f"Conversation:\n{conversation}\n\nRewritten last question:"}]


def clean_rewrite(reply: str | None, question: str) -> str | None:
    """The rewritten question from an LLM's reply; None for one not to be used."""
    if not reply:
        return None
    line = next((s.strip() for s in reply.strip().splitlines() if s.strip()), "")
    line = re.sub(r"^(rewritten( last)? question|standalone question|question)\s*:\s*", "", line, flags=re.IGNORECASE)
    line = line.strip().strip("\"'“”").strip()
    if len(line) < 3 or len(line) > MAX_GROWTH * len(question) + 200:
        return None
    if re.match(r"^(i('m| am)? (sorry|cannot|can't)|as an ai|sorry)\b", line, re.IGNORECASE):
        return None
    return line


class Followups:
    """Each question's standalone form, for one micro-batch at a time."""

    def __init__(self, settings: ConversationSettings, bm25: Bm25Encoder, generator: Generator, *,
                 llm: bool) -> None:
        self._settings = settings
        self._bm25 = bm25
        self._generator = generator
        mode = settings.standalone
        self._mode = ("llm" if llm else "rule") if mode == "auto" else mode
        if self._mode == "llm" and not llm:
            self._mode = "rule"  # RAG_CONVERSATION_STANDALONE=llm without an LLM: the rule is all there is

    def rewrites(self, query: Query) -> bool:
        """The question waits for the LLM before it is searched (so it does not hold its micro-batch back)."""
        return self._mode == "llm" and bool(query.history)

    def rule(self, query: Query) -> str:
        """The question searched without an LLM: itself, or by the rule when it follows others."""
        if not query.history or self._mode == "off":
            return query.question
        return by_rule(self._bm25, query.question, query.history, self._settings.rule_terms)

    async def rewrite(self, query: Query) -> str:
        """The LLM's standalone form of a follow-up, or the rule's when the LLM fails it."""
        s = self._settings
        try:
            async with asyncio.timeout(s.rewrite_timeout_s):
                reply = await self._generator.complete(rewrite_messages(query.question, query.history),
                                                       max_tokens=s.rewrite_tokens)
        except TimeoutError:
            log.warning("rewrite_timeout", timeout_s=s.rewrite_timeout_s)
            reply = None
        except Exception as exc:  # noqa: BLE001 - any failure of the LLM: the rule stands in
            log.warning("rewrite_failed", error=repr(exc))
            reply = None
        rewritten = clean_rewrite(reply, query.question)
        return rewritten if rewritten is not None else by_rule(self._bm25, query.question, query.history,
                                                               s.rule_terms)
