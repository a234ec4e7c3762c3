"""Optional reranking of the fused candidates through a rerank endpoint.

``RAG_RERANKER_BACKEND=cohere`` speaks the ``POST {base_url}/rerank`` of Cohere, Jina,
Infinity and vLLM (``{"model", "query", "documents", "top_n"}`` in,
``{"results": [{"index", "relevance_score"}]}`` out); ``tei`` speaks Hugging Face
Text Embeddings Inference's (``{"query", "texts"}`` in, ``[{"index", "score"}]`` out).
Off by default: no package ships a cross-encoder's weights, so none can be the offline default.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import httpx
import msgspec
import structlog

from core.errors import Unavailable
from core.settings import RerankerSettings

log = structlog.get_logger("workers.reranker")

#: Characters of each candidate sent (a cross-encoder reads about 512 tokens).
MAX_CHARS = 2_000


class Reranker(Protocol):
    async def rerank_batch(self, questions: list[str],
                           candidates: list[list[str]]) -> list[list[float] | Unavailable]:
        """A relevance score per candidate text of each question, every question of a micro-batch at once;
        the error instead for a question whose request failed (the others keep their scores)."""
        ...

    async def aclose(self) -> None: ...


class _Result(msgspec.Struct):
    index: int
    relevance_score: float | None = None
    score: float | None = None


class _CohereReply(msgspec.Struct):
    results: list[_Result]


_decode_cohere = msgspec.json.Decoder(_CohereReply).decode
_decode_tei = msgspec.json.Decoder(list[_Result]).decode


class HttpReranker:
    def __init__(self, settings: RerankerSettings) -> None:
        if not settings.base_url:
            raise ValueError("RAG_RERANKER_BASE_URL must be set for a reranker backend")
        self._settings = settings
        self._url = settings.base_url.rstrip("/") + "/rerank"
        self._client = httpx.AsyncClient(timeout=settings.timeout_s,
                                         headers={"Authorization": f"Bearer {settings.api_key}"})

    async def rerank_batch(self, questions: list[str],
                           candidates: list[list[str]]) -> list[list[float] | Unavailable]:
        # One request per question (the endpoints take one query each), all in flight together.
        replies = await asyncio.gather(*(self.rerank(q, texts) for q, texts in zip(questions, candidates)),
                                       return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException) and not isinstance(reply, Unavailable):
                raise reply
        return replies  # type: ignore[return-value]

    async def rerank(self, question: str, texts: list[str]) -> list[float]:
        """Scores of ``texts`` for ``question``, in their order; raises Unavailable."""
        if not texts:
            return []
        clipped = [t[:MAX_CHARS] for t in texts]
        s = self._settings
        # TEI refuses (413) a pair past the model's window unless asked to truncate it.
        body = ({"query": question, "texts": clipped, "truncate": True} if s.backend == "tei" else
                {"model": s.model, "query": question, "documents": clipped, "top_n": len(clipped)})
        try:
            response = await self._client.post(self._url, json=body)
            response.raise_for_status()
            results = _decode_tei(response.content) if s.backend == "tei" else _decode_cohere(response.content).results
        except (httpx.HTTPError, msgspec.DecodeError) as exc:
            raise Unavailable(f"the rerank endpoint {self._url} failed: {exc}", code="reranker_unavailable") from None
        scores = [float("-inf")] * len(texts)
        for r in results:
            value = r.relevance_score if r.relevance_score is not None else r.score
            if 0 <= r.index < len(texts) and value is not None:
                scores[r.index] = float(value)
        return scores

    async def aclose(self) -> None:
        await self._client.aclose()


def create_reranker(settings: RerankerSettings) -> Reranker | None:
    if settings.backend == "off":
        return None
    return HttpReranker(settings)
