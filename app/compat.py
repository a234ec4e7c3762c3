"""The OpenAI-compatible routes: chat completions (``model`` names a collection), models, embeddings.

They submit the same jobs to the same queue as ``/v1/ask`` (the workers embed, search and
generate: the API never does), and answer in OpenAI's shapes, errors included
(``{"error": {"message", "type", "param", "code"}}`` with this service's stable codes). Inputs
that clients send are taken as they come: extra fields are ignored, ``content`` may be a list of
parts (text parts are read, others refused with ``unsupported_content``), system messages are the
client's instructions; what cannot be honoured (``n`` > 1, ``tools``, a ``response_format`` other
than text, ``logprobs``) is refused with ``unsupported_parameter``, naming it.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from msgspec import Struct

from app.auth import Principal, principal
from app.completions import ChatRelay, Translation, page_url
from app.errors import OPENAI_EXCEPTION_HANDLERS, ModelNotFound, UnsupportedParameter, documented
from app.schemas import OpenAIErrorBody
from core.documents import DocumentRegistry
from core.errors import BadRequest
from core.payload import COLLECTION_NAME
from core.protocol import Done, Embed, Embeddings, Query, Source, Turn, decode_vector

if TYPE_CHECKING:
    from app.jobs import Jobs


class ContentPart(Struct, kw_only=True):
    type: str
    text: str | None = None


class ChatMessage(Struct, kw_only=True):
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(Struct, kw_only=True):
    include_usage: bool = False


class ChatRequest(Struct, kw_only=True):
    """What ``POST /v1/chat/completions`` reads; other fields (temperature, user, max_tokens...) are ignored:
    the service's own settings apply."""

    model: str
    messages: list[ChatMessage]
    stream: bool = False
    stream_options: StreamOptions | None = None
    #: This service's own (the openai SDK sends them with ``extra_body``, LibreChat with ``addParams``): sources
    #: per answer, and the cited sources added to the answer's text as markdown links (for clients that
    #: show no annotations).
    top_k: int | None = None
    sources_in_answer: bool = False
    n: int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None


class EmbeddingsRequest(Struct, kw_only=True):
    model: str
    #: A text, or a list of texts (token arrays are refused: the embedder tokenizes for itself).
    input: Any
    encoding_format: str = "float"
    dimensions: int | None = None


class Model(Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "rag-stream"
    #: Documents in the collection (indexed, or being indexed).
    documents: int


class ModelList(Struct, kw_only=True):
    object: str = "list"
    data: list[Model]


#: Message roles whose content instructs the assistant (OpenAI's newer name for ``system`` is ``developer``).
_INSTRUCTING = ("system", "developer")
#: A part of ``content`` holding text (``input_text``: the Responses API's name for it).
_TEXT_PARTS = ("text", "input_text")


def message_text(message: ChatMessage, where: str) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for i, part in enumerate(message.content):
        if part.type not in _TEXT_PARTS:
            raise UnsupportedParameter(f"{where}.content[{i}]", (
                f"{where}.content[{i}] is of type {part.type!r}: this service reads text parts only"),
                code="unsupported_content")
        texts.append(part.text or "")
    return "\n".join(texts)


def refuse_unsupported(request: ChatRequest) -> None:
    if request.n is not None and request.n != 1:
        raise UnsupportedParameter("n", "n: this service gives one answer per request (n=1)")
    for param, value in (("tools", request.tools), ("functions", request.functions)):
        if value:
            raise UnsupportedParameter(param, f"{param}: this service answers from its documents and calls no tools")
    if request.tool_choice not in (None, "none", "auto"):
        raise UnsupportedParameter("tool_choice", "tool_choice: this service calls no tools")
    if request.response_format is not None and request.response_format.get("type", "text") != "text":
        raise UnsupportedParameter("response_format",
                                   "response_format: answers are text with [n] citations (type 'text' only)")
    if request.logprobs:
        raise UnsupportedParameter("logprobs", "logprobs: not available from this service")


def model_collection(model: str) -> str:
    if not COLLECTION_NAME.fullmatch(model):
        raise ModelNotFound(f"the model {model!r} names no collection: GET /v1/models lists them")
    return model


def readable_model(model: str, asking: Principal) -> None:
    """A collection the key may not read is, to it, a model that does not exist (as OpenAI answers)."""
    if not asking.reads(model):
        raise ModelNotFound(f"the model {model!r} does not exist or this API key may not use it: GET /v1/models "
                            "lists those it may")


class Compat:
    """The OpenAI-compatible routes' service: jobs submitted and relayed in OpenAI's shapes."""

    def __init__(self, jobs: Jobs) -> None:
        self._jobs = jobs
        self._registry = DocumentRegistry(jobs.redis, jobs.keys)

    def query(self, request: ChatRequest) -> Query:
        """The job a chat request asks for: its last user message is the question, the messages before it
        the conversation, its system messages the client's instructions."""
        refuse_unsupported(request)
        collection = model_collection(request.model)
        limits = self._jobs.settings.limits
        texts = [message_text(m, f"messages[{i}]") for i, m in enumerate(request.messages)]
        last = next((i for i in range(len(request.messages) - 1, -1, -1) if request.messages[i].role == "user"), None)
        if last is None:
            raise BadRequest("messages: no message of role 'user' to answer", code="no_user_message")
        for i, m in enumerate(request.messages[:last]):
            if m.role not in (*_INSTRUCTING, "user", "assistant"):
                raise UnsupportedParameter(f"messages[{i}].role", f"messages[{i}].role: {m.role!r} is not served "
                                           "(system, developer, user and assistant messages are)")
        instructions = "\n\n".join(t for m, t in zip(request.messages, texts) if m.role in _INSTRUCTING and t.strip())
        if len(instructions) > limits.question_max_chars:
            raise BadRequest(f"the system messages have {len(instructions)} characters; the limit is "
                             f"{limits.question_max_chars}", code="instructions_too_long")
        turns = [Turn("user" if m.role == "user" else "assistant", t[: limits.question_max_chars])
                 for m, t in zip(request.messages[:last], texts[:last]) if m.role in ("user", "assistant") and t.strip()]
        keep = self._jobs.settings.conversation.max_turns
        return Query(question=self._jobs.question(texts[last]), top_k=self._jobs.top_k(request.top_k),
                     collection=collection, history=turns[-keep:] if keep else [], instructions=instructions or None)

    async def chat(self, request: ChatRequest, base_url: str, asking: Principal) -> ChatRelay:
        query = self.query(request)
        readable_model(request.model, asking)
        job_id = await self._jobs.submit(query, {"question": query.question}, asking)
        collection = query.collection or request.model
        key_id = asking.key_id
        secret = await self._jobs.tokens.secret() if key_id else None

        def url(source: Source) -> str:
            token = self._jobs.tokens.page(secret, source.document_id, collection, key_id) if secret and key_id else None
            return page_url(base_url, source, collection, token)

        translation = Translation(
            completion_id=f"chatcmpl-{job_id}", model=request.model, created=int(time.time()), url=url,
            include_usage=bool(request.stream_options and request.stream_options.include_usage),
            source_list=request.sources_in_answer)
        return ChatRelay(self._jobs, job_id, translation, stream=request.stream,
                         keepalive_s=self._jobs.settings.api.keepalive_s)

    async def models(self, asking: Principal) -> ModelList:
        """The collections that hold documents (that the key reads), each with its document count."""
        records = [r for r in await self._registry.documents() if asking.reads(r.collection)]
        counts = Counter(r.collection for r in records)
        created = {r.collection: r.created_ms // 1000 for r in reversed(records)}
        return ModelList(data=[Model(id=c, created=created[c], documents=n) for c, n in sorted(counts.items())])

    async def model(self, model: str, asking: Principal) -> Model:
        found = next((m for m in (await self.models(asking)).data if m.id == model), None)
        if found is None:
            raise ModelNotFound(f"the model {model!r} names no collection with documents: GET /v1/models lists them")
        return found

    async def embeddings(self, request: EmbeddingsRequest, asking: Principal) -> dict[str, Any]:
        """Any key may embed: it reads no collection."""
        settings = self._jobs.settings
        if request.model != settings.embedder.model:
            raise ModelNotFound(f"the model {request.model!r} is not this service's embedder: use "
                                f"{settings.embedder.model!r}")
        if request.encoding_format not in ("float", "base64"):
            raise UnsupportedParameter("encoding_format", "encoding_format: 'float' or 'base64'")
        texts = embedding_inputs(request.input, settings.limits.embed_inputs_max)
        job_id = await self._jobs.submit(Embed(texts=texts, dimensions=request.dimensions), {"texts": len(texts)},
                                         asking)
        events = await self._jobs.result(job_id)
        done = events[-1]
        assert isinstance(done, Done)
        vectors = next(e for e in events if isinstance(e, Embeddings)).vectors
        as_floats = request.encoding_format == "float"
        return {"object": "list", "model": request.model,
                "data": [{"object": "embedding", "index": i, "embedding": decode_vector(v) if as_floats else v}
                         for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": done.usage.prompt_tokens, "total_tokens": done.usage.prompt_tokens}}


def embedding_inputs(value: Any, limit: int) -> list[str]:
    """The texts of an embeddings request's ``input``: a string or a list of strings, none empty."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise BadRequest("input: a text, or a non-empty list of texts", code="invalid_input")
    if not all(isinstance(t, str) for t in texts):
        raise UnsupportedParameter("input", "input: token arrays are not served; send the texts", code="invalid_input")
    if len(texts) > limit:
        raise BadRequest(f"input: {len(texts)} texts; the limit is {limit} (RAG_LIMITS_EMBED_INPUTS_MAX)",
                         code="invalid_input")
    if any(not t.strip() for t in texts):
        raise BadRequest("input: a text is empty", code="invalid_input")
    return texts


class OpenAIController(Controller):
    path = "/v1"
    tags = ("openai",)
    exception_handlers = OPENAI_EXCEPTION_HANDLERS

    @post("/chat/completions", status_code=200, summary="OpenAI-compatible chat completion (model = collection), "
          "streamed or not, with search_results, citations and url_citation annotations",
          responses=documented(404, 429, body=OpenAIErrorBody))
    async def chat(self, compat: NamedDependency[Compat], data: JSONBody[ChatRequest],
                   request: Request[Any, Any, Any]) -> ChatRelay:
        return await compat.chat(data, str(request.base_url).rstrip("/"), principal(request))

    @get("/models", summary="The collections, as OpenAI models, with their document counts", responses=documented(body=OpenAIErrorBody))
    async def models(self, compat: NamedDependency[Compat], request: Request[Any, Any, Any]) -> ModelList:
        return await compat.models(principal(request))

    @get("/models/{model:str}", summary="One collection, as an OpenAI model", responses=documented(404, body=OpenAIErrorBody))
    async def model(self, compat: NamedDependency[Compat], model: FromPath[str],
                    request: Request[Any, Any, Any]) -> Model:
        return await compat.model(model, principal(request))

    @post("/embeddings", status_code=200, summary="OpenAI-compatible embeddings, by the workers' embedder",
          responses=documented(404, 429, body=OpenAIErrorBody))
    async def embeddings(self, compat: NamedDependency[Compat], data: JSONBody[EmbeddingsRequest],
                         request: Request[Any, Any, Any]) -> dict[str, Any]:
        return await compat.embeddings(data, principal(request))
