"""Answer generation: an OpenAI-compatible chat stream, or extractive answers that need no LLM."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from typing import Protocol

import openai
from openai import AsyncOpenAI

from core.errors import BadRequest, Unavailable
from core.protocol import Source, Usage
from core.settings import LLMSettings

SYSTEM_PROMPT = (
    "You answer questions about the user's documents. Use only the numbered sources. "
    "Cite the sources you use as [1], [2]. If the sources do not contain the answer, say so."
)


class Answer:
    """Filled in while a generation streams: token usage as reported by the backend."""

    __slots__ = ("usage",)

    def __init__(self) -> None:
        self.usage = Usage()


class Generator(Protocol):
    def stream(self, question: str, sources: list[Source], answer: Answer) -> AsyncGenerator[str, None]: ...

    async def aclose(self) -> None: ...


def build_prompt(question: str, sources: list[Source], context_chars: int) -> str:
    blocks = [
        f"[{s.n}] {s.file}, page {s.page}{f' ({s.section})' if s.section else ''}:\n{s.snippet[:context_chars]}"
        for s in sources
    ]
    context = "\n\n".join(blocks) if blocks else "(no sources found)"
    return f"Sources:\n\n{context}\n\nQuestion: {question}"


class OpenAIGenerator:
    def __init__(self, settings: LLMSettings) -> None:
        self._settings = settings
        # The openai client retries connection errors, 429 and 5xx with backoff itself.
        self._client = AsyncOpenAI(
            base_url=settings.base_url, api_key=settings.api_key, timeout=settings.timeout_s, max_retries=2
        )

    async def stream(self, question: str, sources: list[Source], answer: Answer) -> AsyncGenerator[str, None]:
        s = self._settings
        try:
            response = await self._client.chat.completions.create(
                model=s.model,
                messages=[
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": build_prompt(question, sources, s.context_chars)},
                ],
                max_tokens=s.max_tokens,
                temperature=s.temperature,
                stream=True,
                stream_options={"include_usage": True},
            )
        except openai.BadRequestError as exc:
            raise BadRequest(f"the LLM refused the request: {exc.message}", code="llm_bad_request") from None
        except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError,
                openai.RateLimitError) as exc:
            raise Unavailable(f"the LLM at {s.base_url} is unavailable: {exc}", code="llm_unavailable") from None
        deltas = 0
        try:
            async for chunk in response:
                if chunk.usage is not None:
                    answer.usage = Usage(
                        prompt_tokens=chunk.usage.prompt_tokens,
                        completion_tokens=chunk.usage.completion_tokens,
                    )
                for choice in chunk.choices:
                    if choice.delta.content:
                        deltas += 1
                        yield choice.delta.content
            if not answer.usage.completion_tokens:
                # Servers without stream usage (llama_cpp.server): one streamed delta is one token.
                answer.usage = Usage(prompt_tokens=answer.usage.prompt_tokens, completion_tokens=deltas)
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise Unavailable(f"the LLM stream broke off: {exc}", code="llm_unavailable") from None
        finally:
            # Closing, not draining: a cancelled answer stops the LLM's work at once.
            await response.close()

    async def aclose(self) -> None:
        await self._client.close()


_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\w+")


class ExtractiveGenerator:
    """Answers with the passages of the best sources that share most words with the question."""

    def __init__(self, sentences: int = 3) -> None:
        self._sentences = sentences

    async def stream(self, question: str, sources: list[Source], answer: Answer) -> AsyncGenerator[str, None]:
        if not sources:
            yield "No indexed passage matches this question."
            return
        terms = {w.lower() for w in _WORD.findall(question) if len(w) > 2}
        scored: list[tuple[float, int, str, int]] = []
        for rank, source in enumerate(sources):
            for position, sentence in enumerate(_SENTENCE.split(source.snippet)):
                words = {w.lower() for w in _WORD.findall(sentence)}
                overlap = len(terms & words)
                if overlap:
                    scored.append((overlap + source.score, -rank * 100 - position, sentence.strip(), source.n))
        if not scored:
            best = sources[0]
            scored = [(0.0, 0, best.snippet.strip(), best.n)]
        scored.sort(reverse=True)
        parts: list[str] = []
        seen: set[str] = set()
        for _, _, text, n in scored:
            if text.lower() not in seen:  # documents repeat themselves; an answer should not
                seen.add(text.lower())
                parts.append(f"{text} [{n}]")
            if len(parts) == self._sentences:
                break
        pieces = " ".join(parts).split(" ")
        for i, piece in enumerate(pieces):
            yield piece if i == 0 else " " + piece
        answer.usage = Usage(completion_tokens=len(pieces))

    async def aclose(self) -> None:
        return None


def create_generator(settings: LLMSettings) -> Generator:
    if settings.backend == "extractive":
        return ExtractiveGenerator()
    if not settings.base_url:
        raise ValueError("RAG_LLM_BASE_URL must be set for the openai LLM backend")
    return OpenAIGenerator(settings)
