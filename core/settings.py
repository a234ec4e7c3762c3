"""Settings: one frozen msgspec Struct tree, loaded once from RAG_* environment variables.

Every field of a section maps to ``RAG_<SECTION>_<FIELD>`` (``RAG_REDIS_URL``,
``RAG_WORKER_BATCH_SIZE``); top-level fields map to ``RAG_<FIELD>`` (``RAG_DATA_DIR``).
An optional ``.env`` file in the working directory supplies values the environment
does not. A bad value stops the process with a message that names the variable: types
and ranges are checked as the tree is built, the rest (URLs, names, settings that must
agree with each other) by :func:`check` right after.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta, Struct

PositiveInt = Annotated[int, Meta(ge=1)]
NonNegInt = Annotated[int, Meta(ge=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]


class RedisSettings(Struct, frozen=True, kw_only=True):
    #: The default is where the run command (scripts/up) starts its Valkey.
    url: str = "redis://127.0.0.1:6390/0"
    #: Every key carries this prefix; tests isolate by prefix.
    prefix: str = "rag"


class QdrantSettings(Struct, frozen=True, kw_only=True):
    #: Unset: the embedded qdrant-edge shard under ``<data_dir>/qdrant``.
    url: str | None = None
    api_key: str | None = None
    collection: str = "chunks"


class EmbedderSettings(Struct, frozen=True, kw_only=True):
    #: ``onnx``: the int8 MiniLM in-process; ``openai``: any OpenAI-compatible embeddings endpoint.
    backend: Literal["onnx", "openai"] = "onnx"
    base_url: str | None = None
    api_key: str = "unused"
    model: str = "all-MiniLM-L6-v2"
    #: Texts per ONNX run; larger batches pad more, smaller ones pay more per-call overhead.
    onnx_batch: PositiveInt = 32
    #: Intra-op threads for onnxruntime; 0 lets onnxruntime decide (all cores).
    threads: NonNegInt = 0


class LLMSettings(Struct, frozen=True, kw_only=True):
    #: ``openai``: an OpenAI-compatible chat endpoint (llama_cpp.server, vLLM, OpenAI...);
    #: ``extractive``: answer with the best cited passages, no LLM at all.
    backend: Literal["openai", "extractive"] = "openai"
    base_url: str | None = "http://127.0.0.1:8001/v1"
    api_key: str = "unused"
    model: str = "smollm2"
    #: An answer of a few cited sentences fits well within it; one cut off here ends on its last whole sentence.
    max_tokens: PositiveInt = 160
    temperature: Annotated[float, Meta(ge=0, le=2)] = 0.2
    #: OpenAI's frequency_penalty (llama.cpp, vLLM and Ollama take it too): small models repeat themselves.
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] = 0.5
    timeout_s: PositiveFloat = 120.0
    #: Tokens of context in the prompt: the retrieved chunks' sentences most related to the question. The
    #: default keeps SmolLM2's first token within about 2 s on 2 cores (it reads 200-280 tokens a second).
    context_tokens: PositiveInt = 300
    #: A question whose best sentence scores below this (0.6 x cosine + 0.4 x BM25 term share) is answered
    #: "not found" without asking the LLM.
    min_score: Annotated[float, Meta(ge=0, le=1)] = 0.3
    #: Sentence vectors kept between answers (1.5 KiB each): questions about the same documents meet the
    #: same sentences, and embedding a question's five sources costs about as much as embedding five chunks.
    sentence_cache: Annotated[int, Meta(ge=0)] = 20000


class ConversationSettings(Struct, frozen=True, kw_only=True):
    #: How a follow-up question (the last of several messages) is made standalone for retrieval: ``auto``
    #: (by the LLM when RAG_LLM_BACKEND=openai, else by the rule), ``llm``, ``rule`` (the question and the
    #: salient terms of the earlier questions), or ``off`` (the last question alone).
    standalone: Literal["auto", "llm", "rule", "off"] = "auto"
    #: Longest rewrite the LLM may write, in tokens, and how long it may take; past either, the rule.
    rewrite_tokens: PositiveInt = 48
    rewrite_timeout_s: PositiveFloat = 4.0
    #: Earlier messages kept (the most recent), each cut to RAG_LIMITS_QUESTION_MAX_CHARS.
    max_turns: NonNegInt = 8
    #: Salient terms of the earlier questions the rule adds, at most.
    rule_terms: PositiveInt = 8


class RetrievalSettings(Struct, frozen=True, kw_only=True):
    #: ``hybrid``: every arm, fused; or one arm alone: ``dense`` (the embedder), ``sparse`` (BM25 over the
    #: chunks and their headers), ``heading`` (BM25 over section headings).
    mode: Literal["hybrid", "dense", "sparse", "heading"] = "hybrid"
    #: How the arms are fused, weighted by the *_weight settings: distribution-based score fusion (each
    #: arm's scores normalized by their spread), or reciprocal rank fusion.
    fusion: Literal["dbsf", "rrf"] = "dbsf"
    #: RRF's k: 1 / (k + rank) per arm.
    rrf_k: PositiveInt = 60
    #: The arms' weights in either fusion (0 leaves an arm out of hybrid search).
    dense_weight: Annotated[float, Meta(ge=0)] = 4.0
    sparse_weight: Annotated[float, Meta(ge=0)] = 1.0
    heading_weight: Annotated[float, Meta(ge=0)] = 2.0
    #: Candidates each arm hands to the fusion.
    candidates: PositiveInt = 50
    #: Embedded store: points added since the last optimization that start a new one in the background.
    optimize_points: PositiveInt = 10_000


class RerankerSettings(Struct, frozen=True, kw_only=True):
    #: ``off``; ``cohere``: a ``/rerank`` endpoint as Cohere, Jina, Infinity and vLLM serve it;
    #: ``tei``: Hugging Face Text Embeddings Inference's ``/rerank``.
    backend: Literal["off", "cohere", "tei"] = "off"
    base_url: str | None = None
    api_key: str = "unused"
    model: str = "rerank"
    #: The fused top this many are reranked.
    candidates: PositiveInt = 20
    timeout_s: PositiveFloat = 10.0


class WorkerSettings(Struct, frozen=True, kw_only=True):
    #: Most jobs read and embedded together.
    batch_size: PositiveInt = 16
    #: How long a batch waits for more jobs after its first one arrived (not when that one woke
    #: an idle consumer: a lone question goes at once).
    batch_wait_ms: NonNegInt = 5
    #: Consumers in one worker process (``--concurrency``).
    concurrency: PositiveInt = 1
    #: Answers generated at once per consumer (the generation semaphore).
    max_generations: PositiveInt = 8
    #: Tokens are coalesced for this long before one XADD.
    token_flush_ms: NonNegInt = 20
    #: A pending job idle this long is claimed by another consumer (XAUTOCLAIM).
    claim_idle_ms: PositiveInt = 60_000
    #: Deliveries after which a job goes to the dead-letter stream.
    max_deliveries: PositiveInt = 3
    #: XREADGROUP BLOCK timeout; bounds how fast a consumer notices shutdown.
    block_ms: PositiveInt = 1_000
    #: SIGTERM grace period for in-flight jobs.
    shutdown_grace_s: PositiveFloat = 30.0
    #: Where the process serves its Prometheus /metrics (one endpoint per process, whatever its
    #: concurrency); port 0: not served. Each worker process on a host needs a port of its own.
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, Meta(ge=0, le=65535)] = 0


class ApiSettings(Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8000
    #: SSE keepalive comment interval.
    keepalive_s: PositiveFloat = 15.0
    #: API keys (``python -m app keys``): ``auto`` requires one once any exists, and answers without one only
    #: on loopback until then (on another address with no key the API refuses to start); ``on`` always
    #: requires one; ``off`` never does (every request may do everything: say so on purpose).
    auth: Literal["auto", "on", "off"] = "auto"
    #: How long the per-job events token returned with a job (for browsers' EventSource) is good for.
    events_token_ttl_s: PositiveInt = 900
    #: How long the page links in an answer's citations (signed for the key that asked) stay good: chat clients
    #: keep them in their history, and revoking the key ends them at once.
    page_link_ttl_s: PositiveInt = 7 * 86_400


class LimitSettings(Struct, frozen=True, kw_only=True):
    question_max_chars: PositiveInt = 2_000
    top_k_default: PositiveInt = 5
    top_k_max: PositiveInt = 20
    #: Most texts one POST /v1/embeddings may send.
    embed_inputs_max: PositiveInt = 256
    #: Questions waiting or in progress beyond which the API answers 429.
    max_backlog: PositiveInt = 1_000
    #: Entries kept per job event stream (MAXLEN ~).
    events_maxlen: PositiveInt = 5_000
    #: Seconds a job's events and record live after their last write.
    events_ttl_s: PositiveInt = 86_400
    #: Requests per second an API key may make (a token bucket in Redis, shared by every API process), and
    #: how many it may make at once after a pause; past them, 429 with Retry-After. 0: no limit.
    #: ``keys create --rps/--burst`` overrides them for one key.
    key_rps: Annotated[float, Meta(ge=0)] = 20.0
    key_burst: PositiveInt = 40


class IngestSettings(Struct, frozen=True, kw_only=True):
    #: Chosen on the dev sets (bench/devsets): chunks of at most 160 tokens found the right page more
    #: often than of 250, and take a fifth less time to embed (MiniLM's attention grows with the square).
    chunk_words: PositiveInt = 120
    overlap_words: NonNegInt = 20
    #: Chunks per message on the ingest stream.
    batch_chunks: PositiveInt = 32
    max_file_mb: PositiveInt = 200
    #: Most embedder tokens per chunk (MiniLM reads 256, two of them [CLS]/[SEP]); whichever
    #: of chunk_words and chunk_tokens is reached first closes a chunk.
    chunk_tokens: Annotated[int, Meta(ge=8, le=8192)] = 160
    #: Most tokens a chunk shares with the one before it (and at most overlap_words words).
    overlap_tokens: NonNegInt = 24
    #: Chunks sent but not yet indexed, at most, per run (backpressure: Redis holds only this window).
    window_chunks: PositiveInt = 2_000
    #: Pages without a text layer are OCRed with Tesseract when it is installed.
    ocr: bool = True
    ocr_language: str = "eng"
    ocr_dpi: Annotated[int, Meta(ge=72, le=600)] = 200
    #: Tables of contents, indexes and lists of figures: ``skip`` them (they repeat every heading and
    #: outranked the pages they point to), or ``keep`` them, indexed and searched like content.
    nav_pages: Literal["skip", "keep"] = "skip"


class Settings(Struct, frozen=True, kw_only=True):
    data_dir: str = "data"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``auto``: JSON unless stdout is a terminal.
    log_format: Literal["auto", "json", "console"] = "auto"
    redis: RedisSettings = RedisSettings()
    qdrant: QdrantSettings = QdrantSettings()
    embedder: EmbedderSettings = EmbedderSettings()
    llm: LLMSettings = LLMSettings()
    conversation: ConversationSettings = ConversationSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    reranker: RerankerSettings = RerankerSettings()
    worker: WorkerSettings = WorkerSettings()
    api: ApiSettings = ApiSettings()
    limits: LimitSettings = LimitSettings()
    ingest: IngestSettings = IngestSettings()

    @property
    def qdrant_path(self) -> Path:
        return Path(self.data_dir) / "qdrant"


class SettingsError(Exception):
    """A RAG_* variable has a value the service cannot use."""


def env_names() -> dict[str, tuple[str, ...]]:
    """Every RAG_* variable and the settings path it sets, in declaration order."""
    names: dict[str, tuple[str, ...]] = {}
    for field in msgspec.structs.fields(Settings):
        if isinstance(field.default, Struct):
            for sub in msgspec.structs.fields(type(field.default)):
                names[f"RAG_{field.name}_{sub.name}".upper()] = (field.name, sub.name)
        else:
            names[f"RAG_{field.name}".upper()] = (field.name,)
    return names


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; '#' comments and surrounding quotes allowed."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        values[key] = value.strip().strip("'\"")
    return values


def load_settings(
    environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")
) -> Settings:
    """Build Settings from the environment (and .env); raises SettingsError naming the variable."""
    env = dict(read_dotenv(dotenv)) if dotenv is not None else {}
    env.update(os.environ if environ is None else environ)
    names = env_names()
    unknown = sorted(k for k in env if k.startswith("RAG_") and k not in names)
    if unknown:
        raise SettingsError(f"unknown setting {unknown[0]} (known: see README, 'Configuration')")
    tree: dict[str, Any] = {}
    for var, path in names.items():
        if var not in env:
            continue
        raw: str | None = env[var]
        if raw == "" or (raw is not None and raw.lower() in {"none", "null"}):
            raw = None
        if len(path) == 1:
            if raw is not None:
                tree[path[0]] = raw
        else:
            tree.setdefault(path[0], {})[path[1]] = raw
    try:
        settings = _convert(tree)
    except msgspec.ValidationError as exc:
        var = _var_for_error(str(exc), names)
        raise SettingsError(f"{var}: {exc}") from None
    check(settings)
    return settings


def check(settings: Settings) -> None:
    """What types and ranges cannot say: URLs, names, and settings that must agree with each other.
    Raises SettingsError naming the first variable found wrong."""
    for var, problem in _problems(settings):
        raise SettingsError(f"{var}: {problem}")


_REDIS_SCHEMES = ("redis", "rediss", "unix")
#: Tesseract language codes, several joined by '+' (eng, chi_sim, eng+deu).
_OCR_LANGUAGES = re.compile(r"^[A-Za-z0-9_]+(?:\+[A-Za-z0-9_]+)*$")


def _problems(s: Settings) -> Iterator[tuple[str, str]]:
    yield from _url("RAG_REDIS_URL", s.redis.url, _REDIS_SCHEMES)
    if not s.redis.prefix or re.search(r"[{}\s]", s.redis.prefix):
        # Braces would break the hash tags every key is built with (core.keys).
        yield "RAG_REDIS_PREFIX", f"{s.redis.prefix!r}: give a non-empty prefix without braces or spaces"
    if s.qdrant.url not in (None, ":memory:"):  # qdrant-client's in-process mode: the tests' server adapter
        yield from _url("RAG_QDRANT_URL", s.qdrant.url, ("http", "https"))
    if not s.qdrant.collection or re.search(r"[/\s]", s.qdrant.collection):
        yield "RAG_QDRANT_COLLECTION", f"{s.qdrant.collection!r}: give a name without slashes or spaces"
    for section, backend, needs_url in (("EMBEDDER", s.embedder.backend, s.embedder.backend == "openai"),
                                        ("LLM", s.llm.backend, s.llm.backend == "openai"),
                                        ("RERANKER", s.reranker.backend, s.reranker.backend != "off")):
        url = getattr(s, section.lower()).base_url
        if needs_url and url is None:
            yield f"RAG_{section}_BASE_URL", f"required with RAG_{section}_BACKEND={backend}: the endpoint's base URL"
        elif url is not None:
            yield from _url(f"RAG_{section}_BASE_URL", url, ("http", "https"))
    yield from _agree(s)
    if not _OCR_LANGUAGES.fullmatch(s.ingest.ocr_language):
        yield "RAG_INGEST_OCR_LANGUAGE", f"{s.ingest.ocr_language!r}: Tesseract language codes joined by '+' (eng+deu)"
    for var, value in (("RAG_DATA_DIR", s.data_dir), ("RAG_API_HOST", s.api.host),
                       ("RAG_WORKER_METRICS_HOST", s.worker.metrics_host)):
        if not value.strip():
            yield var, "must not be empty"


def _agree(s: Settings) -> Iterator[tuple[str, str]]:
    """Settings that must agree with each other."""
    i, limits, r = s.ingest, s.limits, s.retrieval
    if i.overlap_words >= i.chunk_words:
        yield "RAG_INGEST_OVERLAP_WORDS", f"{i.overlap_words} must be below RAG_INGEST_CHUNK_WORDS ({i.chunk_words})"
    if i.overlap_tokens >= i.chunk_tokens:
        yield ("RAG_INGEST_OVERLAP_TOKENS",
               f"{i.overlap_tokens} must be below RAG_INGEST_CHUNK_TOKENS ({i.chunk_tokens})")
    if limits.top_k_default > limits.top_k_max:
        yield ("RAG_LIMITS_TOP_K_DEFAULT",
               f"{limits.top_k_default} is above RAG_LIMITS_TOP_K_MAX ({limits.top_k_max})")
    if r.mode == "hybrid" and r.dense_weight == r.sparse_weight == r.heading_weight == 0:
        yield "RAG_RETRIEVAL_DENSE_WEIGHT", "hybrid search needs an arm of weight above 0 (dense, sparse or heading)"


def _url(var: str, url: str, schemes: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError as exc:
        yield var, f"{url!r} is not a URL: {exc}"
        return
    if parts.scheme not in schemes:
        yield var, f"{url!r}: the scheme must be one of {', '.join(s + '://' for s in schemes)}"
    elif parts.scheme != "unix" and not parts.hostname:
        yield var, f"{url!r} names no host"


def load_or_exit() -> Settings:
    """For entry points: the settings, or the offending variable on stderr and exit status 2."""
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _convert(tree: dict[str, Any]) -> Settings:
    # Unset strings become None only where the field allows it; otherwise keep the default.
    for section, values in list(tree.items()):
        if isinstance(values, dict):
            for key, value in list(values.items()):
                if value is None and not _optional(section, key):
                    del values[key]
    return msgspec.convert(tree, Settings, strict=False)


def _optional(section: str, key: str) -> bool:
    default = getattr(Settings(), section)
    for field in msgspec.structs.fields(type(default)):
        if field.name == key:
            return "None" in repr(field.type)
    return False


def _var_for_error(message: str, names: dict[str, tuple[str, ...]]) -> str:
    # msgspec reports the failing path as "at `$.section.field`".
    if "`$." in message:
        path = tuple(message.split("`$.", 1)[1].split("`", 1)[0].split("."))
        for var, p in names.items():
            if p == path:
                return var
    return "RAG_*"
