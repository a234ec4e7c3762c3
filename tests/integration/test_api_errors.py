"""Bad input of every kind gets a clear JSON error with a stable code, and the API keeps serving."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
import redis

from app.main import API_REPLY_TIMEOUT_S, create_app
from tests.conftest import make_settings
from tests.servers import ThreadedUvicorn, free_port, redis_like_server, valkey_binary


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
    assert error_code(response) == "invalid_json"


async def test_huge_body_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/queries", json={"question": "x" * (2 * 1024 * 1024)})
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"


@pytest.mark.parametrize(("method", "path", "code"), [
    ("GET", "/v1/queries/0123456789abcdef", "job_not_found"),
    ("GET", "/v1/queries/0123456789abcdef/events", "job_not_found"),
    ("DELETE", "/v1/queries/0123456789abcdef", "job_not_found"),
    ("GET", "/v1/queries/..%2F../events", "not_found"),  # no route: the id is never read
    ("GET", "/v1/nothing-here", "not_found"),
    ("POST", "/v1/dead/1-0/requeue", "dead_job_not_found"),
])
async def test_unknown_ids_and_paths(client: httpx.AsyncClient, method: str, path: str, code: str) -> None:
    response = await client.request(method, path)
    assert response.status_code == 404
    assert error_code(response) == code


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


#: Far below the connection's timeouts (5 s to connect, 60 s a read): a 503 this fast waited on none.
AT_ONCE_S = 3.0


async def refused(c: httpx.AsyncClient, method: str, path: str, **kwargs: object) -> httpx.Response:
    """The request, which must be answered 503 `redis_unavailable` with Retry-After, at once."""
    started = time.monotonic()
    response = await c.request(method, path, **kwargs)  # type: ignore[arg-type]
    took = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert error_code(response) == "redis_unavailable"
    assert int(response.headers["retry-after"]) > 0
    assert took < AT_ONCE_S, f"{method} {path}: 503 after {took:.1f} s"
    return response


async def test_redis_gone_answers_503_at_once(prefix: str, tmp_path: Path) -> None:
    with redis_like_server(valkey_binary(), tmp_path / "valkey") as url:
        settings = make_settings(url, prefix, tmp_path)
        with ThreadedUvicorn(create_app(settings)) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
                job_id = (await c.post("/v1/queries", json={"question": "still there?"})).json()["id"]
                assert (await c.get("/readyz")).json()["checks"]["redis"] == "ok"  # (no worker: not ready)
                with contextlib.suppress(redis.ConnectionError):
                    redis.Redis.from_url(url).shutdown(nosave=True)  # Redis goes away under a running API
                await refused(c, "POST", "/v1/queries", json={"question": "is anyone there?"})
                await refused(c, "POST", "/v1/ask", json={"question": "is anyone there?"})
                await refused(c, "GET", f"/v1/queries/{job_id}")
                ready = await c.get("/readyz")
                assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("error")


async def test_redis_that_does_not_answer_gets_503_within_the_reply_timeout(prefix: str, tmp_path: Path) -> None:
    """A Redis that takes connections but answers nothing (frozen, or cut off without a reset): each request
    gets its 503 once the API's reply timeout has passed, not after the blocking reads' 60 s, retried."""
    with redis_like_server(valkey_binary(), tmp_path / "valkey") as url:
        settings = make_settings(url, prefix, tmp_path)
        with ThreadedUvicorn(create_app(settings)) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=300) as c:
                assert (await c.post("/v1/queries", json={"question": "still there?"})).status_code == 202
                with redis.Redis.from_url(url) as r:
                    r.client_pause(120_000, all=True)  # every command waits; the server is stopped after
                started = time.monotonic()
                response = await c.post("/v1/queries", json={"question": "is anyone there?"})
                took = time.monotonic() - started
                assert response.status_code == 503 and error_code(response) == "redis_unavailable"
                assert int(response.headers["retry-after"]) > 0
                assert took < API_REPLY_TIMEOUT_S + AT_ONCE_S, f"503 after {took:.1f} s"


async def test_redis_never_there_answers_503_at_once(prefix: str, tmp_path: Path) -> None:
    settings = make_settings(f"redis://127.0.0.1:{free_port()}/0", prefix, tmp_path)
    with ThreadedUvicorn(create_app(settings)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            await refused(c, "POST", "/v1/queries", json={"question": "is anyone there?"})
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
