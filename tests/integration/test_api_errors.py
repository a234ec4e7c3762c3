"""Bad input of every kind gets a clear JSON error with a stable code, and the API keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest

from app.main import create_app
from tests.conftest import make_settings
from tests.servers import ThreadedUvicorn, free_port


@pytest.fixture
async def client(redis_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(redis_url, prefix, tmp_path, limits_question_max_chars="100")
    with ThreadedUvicorn(create_app(settings)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            yield c


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    return str(body["error"]["code"])


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"question": ""}, "empty_question"),
        ({"question": "   \n"}, "empty_question"),
        ({"question": "x" * 101}, "question_too_long"),
        ({"question": "ok", "top_k": 0}, "invalid_top_k"),
        ({"question": "ok", "top_k": 1000}, "invalid_top_k"),
        ({"question": 42}, "invalid_request"),
        ({}, "invalid_request"),
        ({"question": "ok", "surprise": 1}, "invalid_request"),
    ],
)
async def test_bad_questions(client: httpx.AsyncClient, body: dict[str, object], code: str) -> None:
    for path in ("/v1/queries", "/v1/ask"):
        response = await client.post(path, json=body)
        assert response.status_code == 400
        assert error_code(response) == code


async def test_malformed_json(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/queries", content=b'{"question": ', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert error_code(response) in {"invalid_json", "invalid_request"}


async def test_huge_body_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/queries", json={"question": "x" * (2 * 1024 * 1024)})
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"


async def test_unknown_job_ids(client: httpx.AsyncClient) -> None:
    for path in ("/v1/queries/0123456789abcdef", "/v1/queries/0123456789abcdef/events", "/v1/queries/..%2F../events"):
        response = await client.get(path)
        assert response.status_code == 404
        assert error_code(response) in {"job_not_found", "not_found"}


@pytest.mark.parametrize("last_event_id", ["garbage", "1-2-3", "-1", "$", "1700000000000-0; DROP"])
async def test_garbage_last_event_id(client: httpx.AsyncClient, last_event_id: str) -> None:
    job = (await client.post("/v1/queries", json={"question": "anything"})).json()
    response = await client.get(job["links"]["events"], headers={"Last-Event-ID": last_event_id})
    assert response.status_code == 400
    assert error_code(response) == "invalid_last_event_id"


async def test_queued_job_status_and_openapi(client: httpx.AsyncClient) -> None:
    job = (await client.post("/v1/queries", json={"question": "still waiting?"})).json()
    status = (await client.get(f"/v1/queries/{job['id']}")).json()
    assert status["status"] == "queued" and status["question"] == "still waiting?"
    schema = (await client.get("/schema/openapi.json")).json()
    assert {"/v1/ask", "/v1/queries", "/v1/queries/{job_id}", "/v1/queries/{job_id}/events"} <= set(schema["paths"])
    assert (await client.get("/healthz")).json()["status"] == "ok"


async def test_openapi_documents_the_error_body_every_error_has(client: httpx.AsyncClient) -> None:
    # Not Litestar's own 400 body ({status_code, detail}), which this API never sends.
    schema = (await client.get("/schema/openapi.json")).json()
    documented = {}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation.get("responses", {}).items():
                if path.startswith("/v1/") and status[0] in "45":
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    documented[(method, path, status)] = ref.rsplit("/", 1)[-1]
    openai_routes = {k: v for k, v in documented.items() if k[1].startswith(("/v1/chat", "/v1/models", "/v1/embed"))}
    assert set(openai_routes.values()) == {"OpenAIErrorBody"} and ("post", "/v1/chat/completions", "429") in openai_routes
    assert {v for k, v in documented.items() if k not in openai_routes} == {"ErrorBody"}
    assert {("post", "/v1/ask", "400"), ("post", "/v1/ask", "429"), ("get", "/v1/queries/{job_id}", "404"),
            ("get", "/v1/queries/{job_id}/events", "400"), ("post", "/v1/documents", "413"),
            ("delete", "/v1/queries/{job_id}", "409"), ("post", "/v1/queries", "503")} <= set(documented)
    assert set(schema["components"]["schemas"]["ErrorBody"]["properties"]) == {"error"}


async def test_redis_down_answers_503_fast(prefix: str, tmp_path: Path) -> None:
    settings = make_settings(f"redis://127.0.0.1:{free_port()}/0", prefix, tmp_path)
    with ThreadedUvicorn(create_app(settings)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            response = await c.post("/v1/queries", json={"question": "is anyone there?"})
            assert response.status_code == 503
            assert error_code(response) == "redis_unavailable"
            ready = await c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "unavailable"


def openai_client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


async def test_openai_routes_answer_429_in_openai_shape(redis_url: str, prefix: str, tmp_path: Path) -> None:
    settings = make_settings(redis_url, prefix, tmp_path, limits_max_backlog="1")
    with ThreadedUvicorn(create_app(settings)) as server:
        async with httpx.AsyncClient(base_url=server.url) as c:
            assert (await c.post("/v1/queries", json={"question": "waiting, no worker"})).status_code == 202
        async with openai_client(server.url) as client:
            with pytest.raises(openai.RateLimitError) as refused:
                await client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "overloaded" and refused.value.response.headers["retry-after"]
    assert refused.value.body["type"] == "rate_limit_error"  # type: ignore[index]


async def test_openai_routes_answer_503_in_openai_shape(prefix: str, tmp_path: Path) -> None:
    settings = make_settings(f"redis://127.0.0.1:{free_port()}/0", prefix, tmp_path)
    with ThreadedUvicorn(create_app(settings)) as server, pytest.raises(openai.InternalServerError) as down:
        async with openai_client(server.url) as client:
            await client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
    assert down.value.status_code == 503 and down.value.code == "redis_unavailable"
    assert down.value.response.headers["retry-after"]
