"""API keys against the real service: a worker and two API processes sharing one Redis, keys made and revoked
with ``python -m app keys``, documents in two collections ("alpha" and "beta"), the real openai SDK."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Service, running_service
from tests.pdfs import FACTS, write_pdf
from tests.servers import ROOT, Proc, free_port, wait_for_port
from tests.sse import parse_sse

ZEPHYR = "Where does the Zephyr turbine generate electricity?"
HELIOS = "What does the Helios compiler translate Pascal programs into?"


def keys_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", "keys", *args], env=env, cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=60)


def make_key(env: dict[str, str], *args: str) -> tuple[str, str]:
    """``keys create``: (its id, the key to send)."""
    run = keys_cli(env, "create", "--json", *args)
    assert run.returncode == 0, run.stderr
    made = json.loads(run.stdout)
    return made["api_key"]["id"], made["key"]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def error(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


@dataclass
class World:
    service: Service
    #: The second API process, on the same Redis.
    api2: str
    alpha: str  # a key of collection alpha, that may write
    beta: str  # a key of collection beta, that may write
    alpha_read: str  # alpha, read only
    alpha_admin: str  # alpha, admin (no write)
    root: str  # every collection, write and admin
    documents: dict[str, str]  # collection -> its document's id

    @property
    def api1(self) -> str:
        return self.service.api_url


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_url: str, module_llm: Any) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("keys")
    with running_service(tmp, redis_url, "keys", llm_backend="openai", llm_base_url=module_llm[1],
                         ingest_chunk_words="40", ingest_overlap_words="5", ingest_ocr="false") as svc:
        documents = {}
        for collection, pages in (("alpha", {1: FACTS[1], 2: FACTS[2]}), ("beta", {1: FACTS[3], 2: FACTS[4]})):
            pdf = write_pdf(tmp / f"{collection}.pdf", {page: text * 2 for page, text in pages.items()},
                            title=f"{collection} facts")
            run = subprocess.run([sys.executable, "-m", "ingest", "--json", "--collection", collection, str(pdf)],
                                 env=svc.env, cwd=ROOT, check=False, capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stderr
            documents[collection] = next(line["document_id"] for line in map(json.loads, run.stdout.splitlines())
                                         if line.get("document_id"))
        port = free_port()
        api2 = Proc([sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port),
                     "--log-level", "warning"], svc.env, tmp / "api2.log")
        try:
            wait_for_port(port, proc=api2.proc)
            root = make_key(svc.env, "--name", "operator", "--collections", "*", "--write", "--admin")[1]

            def made(name: str, collections: list[str], **rights: bool) -> str:
                response = httpx.post(f"{svc.api_url}/v1/keys", headers=auth(root),
                                      json={"name": name, "collections": collections, **rights})
                assert response.status_code == 201, response.text
                return str(response.json()["key"])

            yield World(
                service=svc, api2=f"http://127.0.0.1:{port}", documents=documents, root=root,
                alpha=made("alpha writer", ["alpha"], write=True), beta=made("beta writer", ["beta"], write=True),
                alpha_read=made("alpha reader", ["alpha"]), alpha_admin=made("alpha admin", ["alpha"], admin=True))
        finally:
            api2.stop()


def events(url: str, headers: dict[str, str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """A job's events, read to its terminal one."""
    response = httpx.get(url, headers=headers or {}, timeout=60)
    assert response.status_code == 200, response.text
    return [(e.event, e.data) for e in parse_sse(response.text)]


def ask(world: World, key: str, question: str, collection: str) -> dict[str, Any]:
    """Submit a question with ``key``; the job's 202 body."""
    response = httpx.post(f"{world.api1}/v1/queries", headers=auth(key),
                          json={"question": question, "collection": collection})
    assert response.status_code == 202, response.text
    return dict(response.json())


def test_bad_and_missing_keys_get_401_with_a_stable_code(world: World) -> None:
    for api in (world.api1, world.api2):
        missing = httpx.get(f"{api}/v1/documents")
        assert error(missing) == (401, "missing_api_key") and missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert error(httpx.get(f"{api}/v1/documents", headers=auth("nonsense"))) == (401, "invalid_api_key")
        forged = world.alpha[:-8] + "AAAAAAAA"  # the right id, a wrong secret
        assert error(httpx.get(f"{api}/v1/documents", headers={"X-API-Key": forged})) == (401, "invalid_api_key")
        assert error(httpx.get(f"{api}/v1/documents", headers={"Authorization": f"Basic {world.alpha}"})) == (
            401, "invalid_api_key")
        assert httpx.get(f"{api}/v1/documents", headers={"X-API-Key": world.alpha}).status_code == 200
        # The OpenAI-compatible routes answer in OpenAI's shape, with the same codes.
        body = httpx.get(f"{api}/v1/models").json()["error"]
        assert (body["type"], body["code"]) == ("authentication_error", "missing_api_key")
        # Health, metrics and the page's static file stay open.
        assert httpx.get(f"{api}/healthz").status_code == 200
        assert httpx.get(f"{api}/readyz").status_code == 200
        assert httpx.get(f"{api}/").status_code == 200
    with pytest.raises(openai.AuthenticationError) as bad:
        openai.OpenAI(base_url=f"{world.api1}/v1", api_key="unused", max_retries=0).models.list()
    assert bad.value.code == "invalid_api_key"


def test_key_a_never_sees_collection_b(world: World) -> None:
    alpha, beta_doc = auth(world.alpha), world.documents["beta"]
    listed = httpx.get(f"{world.api1}/v1/documents", headers=alpha).json()["documents"]
    assert {d["collection"] for d in listed} == {"alpha"}
    assert error(httpx.get(f"{world.api1}/v1/documents?collection=beta", headers=alpha)) == (403, "forbidden")
    assert error(httpx.get(f"{world.api1}/v1/documents/{beta_doc}", headers=alpha)) == (404, "document_not_found")
    assert error(httpx.get(f"{world.api1}/v1/documents/{beta_doc}/pages/1?collection=beta", headers=alpha)) == (
        403, "forbidden")
    assert error(httpx.delete(f"{world.api1}/v1/documents/{beta_doc}", headers=alpha)) == (404, "document_not_found")
    assert httpx.get(f"{world.api1}/v1/documents/{beta_doc}", headers=auth(world.beta)).status_code == 200
    # Questions: to beta, refused; to alpha, never a source from beta, even about beta's facts.
    for route in ("/v1/queries", "/v1/ask"):
        refused = httpx.post(f"{world.api1}{route}", headers=alpha, json={"question": HELIOS, "collection": "beta"})
        assert error(refused) == (403, "forbidden")
    job = ask(world, world.alpha, HELIOS + " And the Zephyr turbine?", "alpha")
    found = events(world.api1 + job["links"]["events"], alpha)
    sources = next(data["sources"] for kind, data in found if kind == "sources")
    assert sources and {s["document_id"] for s in sources} == {world.documents["alpha"]}
    # The OpenAI-compatible routes: the models (collections) are the key's; another is a model that does not exist.
    client = openai.OpenAI(base_url=f"{world.api1}/v1", api_key=world.alpha, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["alpha"]
    with pytest.raises(openai.NotFoundError) as hidden:
        client.chat.completions.create(model="beta", messages=[{"role": "user", "content": HELIOS}])
    assert hidden.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("beta")
    completion = client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": ZEPHYR}])
    assert "Zephyr" in (completion.choices[0].message.content or "")
    assert {r["document_id"] for r in completion.search_results} == {world.documents["alpha"]}  # type: ignore[attr-defined]
    # Its citation links (pages) open with the key, within its collection.
    link: str = completion.citations[0]  # type: ignore[attr-defined]
    page = httpx.get(link, headers=alpha)
    assert page.status_code == 200 and "Zephyr" in page.json()["text"]
    # ... and with no key at all, as a browser following the link from a chat client: the page token opens
    # that document's pages in that collection, and nothing else.
    assert "token=" in link
    opened = httpx.get(link)
    assert opened.status_code == 200 and opened.json()["text"] == page.json()["text"]
    token = link.partition("token=")[2]
    for elsewhere in (f"/v1/documents/{beta_doc}/pages/1?collection=beta&token={token}",
                      f"/v1/documents/{beta_doc}/pages/1?collection=alpha&token={token}",
                      f"/v1/documents/{world.documents['alpha']}/pages/1?token={token}",  # the default collection
                      f"/v1/documents/{world.documents['alpha']}?collection=alpha&token={token}",
                      "/v1/documents?collection=alpha&token=" + token):
        refused = httpx.get(world.api2 + elsewhere)
        assert refused.status_code == 401, elsewhere
    assert error(httpx.get(link.replace("token=", "token=x"))) == (401, "invalid_page_token")


def test_a_stolen_job_id_is_useless_without_its_key(world: World) -> None:
    job = ask(world, world.alpha, ZEPHYR, "alpha")
    job_id, events_link = job["id"], job["links"]["events"]
    assert "?token=" in events_link
    for api in (world.api1, world.api2):
        for path in (f"/v1/queries/{job_id}", f"/v1/queries/{job_id}/events"):
            assert error(httpx.get(api + path)) == (401, "missing_api_key")
            # Another key, even one of every collection: the job does not exist for it.
            for other in (world.beta, world.alpha_read, world.root):
                assert error(httpx.get(api + path, headers=auth(other))) == (404, "job_not_found")
        assert error(httpx.delete(f"{api}/v1/queries/{job_id}", headers=auth(world.beta))) == (404, "job_not_found")
    # The events token, with no key at all (as a browser's EventSource): that job's events, on either API.
    assert events(world.api2 + events_link)[-1][0] == "done"
    status = httpx.get(f"{world.api1}/v1/queries/{job_id}", headers=auth(world.alpha)).json()
    assert status["status"] == "done" and "?token=" in status["links"]["events"]
    assert error(httpx.delete(f"{world.api1}/v1/queries/{job_id}", headers=auth(world.alpha))) == (409, "job_finished")
    # It opens nothing else: not the job's status, not another job's events, not once altered.
    token = events_link.split("?token=")[1]
    assert error(httpx.get(f"{world.api1}/v1/queries/{job_id}?token={token}")) == (401, "missing_api_key")
    other = ask(world, world.alpha, ZEPHYR, "alpha")["id"]
    assert error(httpx.get(f"{world.api1}/v1/queries/{other}/events?token={token}")) == (401, "invalid_events_token")
    altered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert error(httpx.get(f"{world.api1}{events_link.split('?')[0]}?token={altered}")) == (
        401, "invalid_events_token")


def test_write_and_admin_rights(world: World, tmp_path: Any) -> None:
    pdf = write_pdf(tmp_path / "kelp.pdf", {1: FACTS[2] * 2}, title="Kelp")

    def upload(key: str, collection: str) -> httpx.Response:
        with pdf.open("rb") as f:
            return httpx.post(f"{world.api1}/v1/documents", headers=auth(key), timeout=60,
                              files={"file": ("kelp.pdf", f, "application/pdf")}, data={"collection": collection})

    assert error(upload(world.alpha_read, "alpha")) == (403, "forbidden")
    assert error(upload(world.alpha, "beta")) == (403, "forbidden")
    accepted = upload(world.alpha, "alpha")
    assert accepted.status_code == 202
    # The upload's ingest job is the key's; its events link carries the job's token.
    assert events(world.api1 + accepted.json()["links"]["events"])[-1][0] == "done"
    assert error(httpx.get(f"{world.api1}/v1/queries/{accepted.json()['id']}", headers=auth(world.beta))) == (
        404, "job_not_found")
    kelp = next(d["id"] for d in httpx.get(f"{world.api1}/v1/documents", headers=auth(world.alpha)).json()["documents"]
                if d["file"] == "kelp.pdf")
    assert error(httpx.delete(f"{world.api1}/v1/documents/{kelp}", headers=auth(world.alpha_read))) == (
        403, "forbidden")
    deleting = httpx.delete(f"{world.api1}/v1/documents/{kelp}", headers=auth(world.alpha))
    assert deleting.status_code == 202 and events(world.api1 + deleting.json()["links"]["events"])[-1][0] == "done"
    # Keys over HTTP: admin keys only, within their collections, granting no right they lack.
    assert error(httpx.get(f"{world.api1}/v1/keys", headers=auth(world.alpha))) == (403, "forbidden")
    listed = httpx.get(f"{world.api1}/v1/keys", headers=auth(world.alpha_admin)).json()["keys"]
    assert {tuple(k["collections"]) for k in listed} == {("alpha",)}
    assert all("hash" not in k and "key" not in k for k in listed)
    for refused in ({"name": "x", "collections": ["beta"]}, {"name": "x", "collections": ["*"]},
                    {"name": "x", "collections": ["alpha"], "write": True}):
        assert error(httpx.post(f"{world.api1}/v1/keys", headers=auth(world.alpha_admin), json=refused)) == (
            403, "forbidden")
    made = httpx.post(f"{world.api1}/v1/keys", headers=auth(world.alpha_admin),
                      json={"name": "reader 2", "collections": ["alpha"]})
    assert made.status_code == 201
    new_key, new_id = made.json()["key"], made.json()["api_key"]["id"]
    assert httpx.get(f"{world.api2}/v1/documents", headers=auth(new_key)).status_code == 200
    assert httpx.delete(f"{world.api1}/v1/keys/{new_id}", headers=auth(world.alpha_admin)).status_code == 204
    assert error(httpx.get(f"{world.api2}/v1/documents", headers=auth(new_key))) == (401, "invalid_api_key")


def test_dead_letters_are_an_admin_keys_of_its_collections_only(world: World) -> None:
    # The fake LLM answers a question with FAIL_PERMANENT in it 400: the job fails for good, dead-lettered at once.
    mine = ask(world, world.alpha, "FAIL_PERMANENT " + ZEPHYR, "alpha")
    theirs = ask(world, world.beta, "FAIL_PERMANENT " + HELIOS, "beta")
    for job, key in ((mine, world.alpha), (theirs, world.beta)):
        assert events(world.api1 + job["links"]["events"], auth(key))[-1][0] == "error"
    assert error(httpx.get(f"{world.api1}/v1/dead", headers=auth(world.alpha))) == (403, "forbidden")

    def dead(key: str) -> dict[str, str]:
        response = httpx.get(f"{world.api1}/v1/dead", headers=auth(key))
        assert response.status_code == 200, response.text
        return {d["job_id"]: d["entry_id"] for d in response.json()}

    assert mine["id"] in dead(world.alpha_admin) and theirs["id"] not in dead(world.alpha_admin)
    everyone = dead(world.root)
    assert {mine["id"], theirs["id"]} <= set(everyone)
    refused = httpx.post(f"{world.api1}/v1/dead/{everyone[theirs['id']]}/requeue", headers=auth(world.alpha_admin))
    assert error(refused) == (404, "dead_job_not_found")
    assert httpx.post(f"{world.api1}/v1/dead/{everyone[mine['id']]}/requeue",
                      headers=auth(world.alpha_admin)).status_code == 202


def test_a_revoked_key_stops_working_at_once_on_every_replica(world: World) -> None:
    key_id, key = make_key(world.service.env, "--name", "leaked", "--collections", "alpha")
    job = ask(world, key, ZEPHYR, "alpha")
    for api in (world.api1, world.api2):
        assert httpx.get(f"{api}/v1/models", headers=auth(key)).status_code == 200
    run = keys_cli(world.service.env, "revoke", key_id)
    assert run.returncode == 0 and key_id in run.stdout
    for api in (world.api2, world.api1):  # the very next request, on each process
        assert error(httpx.get(f"{api}/v1/models", headers=auth(key))) == (401, "invalid_api_key")
        # Its jobs' events tokens die with it.
        assert error(httpx.get(api + job["links"]["events"])) == (401, "invalid_events_token")
    assert keys_cli(world.service.env, "revoke", key_id).returncode == 1  # gone already


def test_the_rate_limit_holds_across_two_api_processes(world: World) -> None:
    # 4 requests at once, then one per 5 s: the fifth, whichever process it reaches, is refused.
    _, key = make_key(world.service.env, "--name", "limited", "--collections", "alpha", "--rps", "0.2", "--burst", "4")
    answers = [httpx.get(f"{api}/v1/models", headers=auth(key)) for api in (world.api1, world.api2) * 3]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 429, 429]
    assert error(answers[4]) == (429, "rate_limited") and 1 <= int(answers[4].headers["Retry-After"]) <= 5
    assert answers[5].json()["error"]["type"] == "rate_limit_error"  # /v1/models is OpenAI's
    assert httpx.get(f"{world.api2}/v1/models", headers=auth(world.alpha)).status_code == 200  # its own bucket


def test_only_a_hash_of_the_secret_is_stored_and_keys_list_shows_none(world: World) -> None:
    key_id, key = make_key(world.service.env, "--name", "audited", "--collections", "alpha,beta", "--rps", "3")
    client = redis.Redis.from_url(world.service.env["RAG_REDIS_URL"])
    try:
        stored = client.hgetall(world.service.keys.api_key(key_id))
    finally:
        client.close()
    secret = key.split("_", 2)[2]
    assert stored[b"hash"] == hashlib.sha256(secret.encode()).hexdigest().encode()
    assert not any(secret.encode() in value for value in stored.values())
    listed = keys_cli(world.service.env, "list", "--json")
    assert listed.returncode == 0 and secret not in listed.stdout
    mine = next(k for k in json.loads(listed.stdout) if k["id"] == key_id)
    assert (mine["name"], mine["collections"], mine["write"], mine["admin"], mine["rps"]) == (
        "audited", ["alpha", "beta"], False, False, 3.0)
    bad = keys_cli(world.service.env, "create", "--name", "x", "--collections", "no/slashes")
    assert bad.returncode == 2 and bad.stderr.startswith("error: collections:")


def test_safe_by_default(tmp_path: Any, redis_url: str) -> None:
    """Open on loopback while no key exists; closed at once when one does; elsewhere, no start without one."""
    from tests.conftest import child_env, settings_env

    env = child_env(settings_env(redis_url, f"safe{time.time_ns() % 10**9}", tmp_path / "data"))
    port = free_port()
    api = Proc([sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port),
                "--log-level", "warning"], env, tmp_path / "api.log")
    url = f"http://127.0.0.1:{port}/v1/documents"
    try:
        wait_for_port(port, proc=api.proc)
        assert httpx.get(url).status_code == 200
        assert httpx.get(url, headers=auth("whatever-clients-send")).status_code == 200
        # On another address, with no key: no start, one line saying what to do.
        exposed = {**env, "RAG_API_HOST": "0.0.0.0", "RAG_API_PORT": str(free_port())}
        refused = subprocess.run([sys.executable, "-m", "app"], env=exposed, cwd=ROOT, check=False,
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2
        [line] = refused.stderr.splitlines()
        assert "RAG_API_HOST=0.0.0.0" in line and "python -m app keys create" in line and "RAG_API_AUTH=off" in line
        key_id, key = make_key(env, "--name", "first", "--collections", "default")
        assert error(httpx.get(url)) == (401, "missing_api_key")  # the very next request
        assert httpx.get(url, headers=auth(key)).status_code == 200
        # Health, metrics and the page stay open: probes and Prometheus carry no key.
        base = f"http://127.0.0.1:{port}"
        for public in ("/healthz", "/metrics", "/"):
            assert httpx.get(base + public).status_code == 200, public
        scraped = {f.name: f for f in text_string_to_metric_families(httpx.get(base + "/metrics").text)}
        refusals = [s.value for s in scraped["rag_http_requests"].samples
                    if s.name.endswith("_total") and s.labels["status"] == "401"]
        assert sum(refusals) >= 1  # the refusal above is counted like any response
        # With a key, it starts on any address, and wants the key there too.
        served = Proc([sys.executable, "-m", "app"], exposed, tmp_path / "exposed.log")
        try:
            wait_for_port(int(exposed["RAG_API_PORT"]), proc=served.proc)
            assert error(httpx.get(f"http://127.0.0.1:{exposed['RAG_API_PORT']}/v1/documents")) == (
                401, "missing_api_key")
        finally:
            served.stop()
        assert keys_cli(env, "revoke", key_id).returncode == 0
        assert httpx.get(url).status_code == 200  # no key left: open again, on loopback only
    finally:
        api.stop()
