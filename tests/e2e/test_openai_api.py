"""The real openai SDK, sync and async, streaming and not, as the client of a running API and worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.e2e.conftest import Service, running_service
from tests.pdfs import FACTS, write_pdf

ZEPHYR = "Where does the Zephyr turbine generate electricity?"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, redis_url: str, module_llm: Any) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("openai")
    with running_service(tmp, redis_url, "oa", llm_backend="openai", llm_base_url=module_llm[1], ingest_chunk_words="40",
                         ingest_overlap_words="5") as svc:
        run = svc.ingest(write_pdf(tmp / "facts.pdf", {page: text * 2 for page, text in FACTS.items()}))
        assert run.returncode == 0, run.stderr
        yield svc


def client(service: Service, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.api_url}/v1", api_key="unused", **kwargs)


def test_models_list_the_collections_with_their_documents(service: Service) -> None:
    models = client(service).models.list()
    assert [(m.id, m.documents) for m in models.data] == [("default", 1)]  # type: ignore[attr-defined]
    assert client(service).models.retrieve("default").id == "default"


def test_streaming_sources_first_annotations_then_citations_and_usage(service: Service) -> None:
    with client(service).chat.completions.create(
            model="default", stream=True, messages=[{"role": "user", "content": ZEPHYR}]) as stream:
        chunks = list(stream)
    first, last = chunks[0], chunks[-1]
    results = first.search_results  # type: ignore[attr-defined]
    assert results and results[0]["file"] == "facts.pdf" and results[0]["page"] == 1
    assert {"title", "url", "snippet", "file", "page", "page_end", "score"} <= set(results[0])
    assert first.choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Zephyr" in text and "[1]" in text
    annotations = [a for c in chunks if c.choices for a in (c.choices[0].delta.model_extra or {}).get("annotations", [])]
    assert annotations and annotations[0]["type"] == "url_citation"
    cited = annotations[0]["url_citation"]
    assert text[cited["start_index"]:cited["end_index"]] == "[1]" and cited["url"] == results[0]["url"]
    assert last.choices[0].finish_reason == "stop"
    assert last.citations == [r["url"] for r in results]  # type: ignore[attr-defined]
    assert last.usage is not None and last.usage.completion_tokens > 0
    # Every citation's url resolves on the service: the page's text and its document.
    page = httpx.get(cited["url"]).json()
    assert page["page"] == 1 and page["document"]["file"] == "facts.pdf" and "Zephyr turbine" in page["text"]
    assert "<h1>" in httpx.get(cited["url"], headers={"Accept": "text/html"}).text
    missing = httpx.get(cited["url"].replace("/pages/1", "/pages/99")).json()
    assert missing == {"error": {"code": "page_not_found", "message": "document " + page["document"]["id"]
                                 + " has pages 1 to 4, not 99"}}


def test_not_streaming_message_annotations_and_usage(service: Service) -> None:
    completion = client(service).chat.completions.create(model="default",
                                                         messages=[{"role": "user", "content": ZEPHYR}])
    message = completion.choices[0].message
    assert "Zephyr" in (message.content or "")
    assert message.annotations and message.annotations[0].type == "url_citation"
    assert message.annotations[0].url_citation.url.endswith("/pages/1")
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert completion.search_results[0]["page"] == 1  # type: ignore[attr-defined]


async def test_async_client_streaming_and_not(service: Service) -> None:
    async with openai.AsyncOpenAI(base_url=f"{service.api_url}/v1", api_key="unused") as aclient:
        completion = await aclient.chat.completions.create(model="default",
                                                           messages=[{"role": "user", "content": ZEPHYR}])
        stream = await aclient.chat.completions.create(model="default", stream=True,
                                                       stream_options={"include_usage": True},
                                                       messages=[{"role": "user", "content": ZEPHYR}])
        chunks = [c async for c in stream]
    assert "Zephyr" in (completion.choices[0].message.content or "")
    # include_usage: OpenAI's own last chunk, no choices and the usage.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-2].usage is None


def test_a_follow_up_is_searched_standalone_and_the_system_message_kept(service: Service, module_llm: Any) -> None:
    app = module_llm[0]
    sent = len(app.state.get("requests", []))
    completion = client(service).chat.completions.create(model="default", messages=[
        {"role": "system", "content": "Answer like a pirate."},
        {"role": "user", "content": "What does the Helios compiler do?"},
        {"role": "assistant", "content": "It translates Pascal programs into WebAssembly [1]."},
        {"role": "user", "content": [{"type": "text", "text": "And in how many passes?"}]},
    ])
    requests = [body for _, body in app.state.requests[sent:]]
    rewrite, answer = requests[0], requests[-1]
    assert not rewrite.get("stream") and "Helios" in rewrite["messages"][-1]["content"]
    system = answer["messages"][0]["content"]
    assert system.index("numbered sources only") < system.index("Answer like a pirate.")
    # The follow-up names nothing; searched standalone, it finds the Helios page.
    assert completion.search_results[0]["page"] == 3  # type: ignore[attr-defined]


def test_hanging_up_cancels_the_job(service: Service, module_llm: Any) -> None:
    app = module_llm[0]
    app.state.token_delay, app.state.repeat = 0.05, 20
    try:
        with client(service).chat.completions.create(
                model="default", stream=True, messages=[{"role": "user", "content": ZEPHYR}]) as stream:
            job_id = stream.response.headers["x-job-id"]
            for i, _ in enumerate(stream):
                if i == 2:
                    break
        deadline = time.monotonic() + 10
        while (status := httpx.get(f"{service.api_url}/v1/queries/{job_id}").json()["status"]) != "cancelled":
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
    finally:
        app.state.token_delay, app.state.repeat = 0.0, 1


def test_embeddings_by_the_workers_embedder(service: Service) -> None:
    result = client(service).embeddings.create(model="all-MiniLM-L6-v2",
                                               input=["ocean tides power", "tidal energy", "marmalade"])
    vectors = np.array([d.embedding for d in result.data])
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    floats = httpx.post(f"{service.api_url}/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": "tidal energy",
                                                                  "encoding_format": "float"}).json()
    assert np.allclose(floats["data"][0]["embedding"], vectors[1], atol=1e-6)
    with pytest.raises(openai.NotFoundError) as missing:
        client(service, max_retries=0).embeddings.create(model="text-embedding-3-small", input="x")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as wrong:
        client(service, max_retries=0).embeddings.create(model="all-MiniLM-L6-v2", input="x", dimensions=256)
    assert wrong.value.code == "unsupported_parameter"


@pytest.mark.parametrize(("kwargs", "error", "code", "param"), [
    ({"model": "gpt-4o"}, openai.NotFoundError, "model_not_found", "model"),
    ({"messages": [{"role": "system", "content": "be brief"}]}, openai.BadRequestError, "no_user_message", None),
    ({"n": 2}, openai.BadRequestError, "unsupported_parameter", "n"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, openai.BadRequestError,
     "unsupported_parameter", "tools"),
    ({"response_format": {"type": "json_object"}}, openai.BadRequestError, "unsupported_parameter", "response_format"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
     openai.BadRequestError, "unsupported_content", "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": "  "}]}, openai.BadRequestError, "empty_question", None),
])
def test_errors_in_openai_shape(service: Service, kwargs: dict[str, Any], error: type[openai.APIStatusError],
                                code: str, param: str | None) -> None:
    request: dict[str, Any] = {"model": "default", "messages": [{"role": "user", "content": ZEPHYR}], **kwargs}
    for stream in (False, True):
        with pytest.raises(error) as raised:
            client(service, max_retries=0).chat.completions.create(stream=stream, **request)
        assert raised.value.code == code and raised.value.param == param
        assert set(raised.value.body) == {"message", "type", "param", "code"}  # type: ignore[arg-type]


def test_our_own_routes_keep_their_error_shape(service: Service) -> None:
    body = httpx.post(f"{service.api_url}/v1/queries", json={"question": ""}).json()
    assert body == {"error": {"code": "empty_question", "message": "the question is empty"}}
