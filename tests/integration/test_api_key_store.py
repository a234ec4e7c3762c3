"""The API keys' Lua lookup and token bucket, and the per-job events tokens, on Redis 7 and Valkey 9."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from app.auth import Principal, loopback, refusal
from app.errors import Unauthorized
from app.tokens import LinkTokens
from core.apikeys import ApiKeys, parse_key
from core.errors import BadRequest
from core.keys import Keys
from core.settings import LimitSettings, Settings, load_settings


async def test_lookup_takes_a_token_only_for_the_right_secret(redis: Redis, prefix: str) -> None:
    keys = ApiKeys(redis, Keys(prefix), LimitSettings(key_rps=0.01, key_burst=2))
    assert not (await keys.lookup(None, None)).any_keys
    key, secret = await keys.create("reader", ["a", "b", "a"])
    assert key.collections == ["a", "b"]
    parsed = parse_key(secret)
    assert parsed is not None and parsed[0] == key.id
    wrong = (await keys.lookup(key.id, "x" * 43))
    assert wrong.any_keys and wrong.scope is None
    for _ in range(5):  # wrong secrets drain nothing: the burst of 2 is still there
        await keys.lookup(key.id, "y" * 43)
    first, second, third = [await keys.lookup(*parsed) for _ in range(3)]
    assert first.scope is not None and first.scope.collections == frozenset({"a", "b"}) and not first.scope.write
    assert (first.wait_ms, second.wait_ms) == (0, 0) and third.wait_ms > 1000
    # A token's key is looked up without its secret (the token's signature proved it), and charged all the same.
    assert (await keys.lookup(key.id, None)).wait_ms > 0
    assert await keys.revoke(key.id) and not await keys.revoke(key.id)
    gone = await keys.lookup(*parsed)
    assert gone.scope is None and not gone.any_keys
    assert await redis.exists(Keys(prefix).api_key_bucket(key.id)) == 0


async def test_a_keys_own_limit_and_every_collection(redis: Redis, prefix: str) -> None:
    keys = ApiKeys(redis, Keys(prefix), LimitSettings(key_rps=0.01, key_burst=1))
    key, secret = await keys.create("ops", ["*", "a"], write=True, admin=True, rps=0, burst=1)
    parsed = parse_key(secret)
    assert parsed is not None and key.collections == ["*"]
    for _ in range(5):  # rps 0: no limit for this key, whatever the default
        found = await keys.lookup(*parsed)
        assert found.wait_ms == 0 and found.scope is not None
    assert found.scope.collections is None and found.scope.write and found.scope.admin
    assert [k.id for k in await keys.all()] == [key.id]
    for bad in ([], ["a/b"], [" "]):
        with pytest.raises(BadRequest):
            await keys.create("x", bad)
    with pytest.raises(BadRequest):
        await keys.create("", ["a"])


async def test_events_tokens_open_one_job_until_they_expire(redis: Redis, prefix: str) -> None:
    tokens = LinkTokens(redis, Keys(prefix), ttl_s=60, page_ttl_s=60)
    token = await tokens.issue("job1", "0123456789ab")
    assert await tokens.verify("job1", token) == "0123456789ab"
    # Another API process (same Redis) checks it with the same secret.
    assert await LinkTokens(redis, Keys(prefix), ttl_s=60, page_ttl_s=60).verify("job1", token) == "0123456789ab"
    for job, forged in (("job2", token), ("job1", token.replace("0123456789ab", "ba9876543210")),
                        ("job1", token[:-1] + ("A" if token[-1] != "A" else "B")), ("job1", "garbage")):
        with pytest.raises(Unauthorized) as refused:
            await tokens.verify(job, forged)
        assert refused.value.code == "invalid_events_token"
    expired = await LinkTokens(redis, Keys(prefix), ttl_s=-1, page_ttl_s=60).issue("job1", "0123456789ab")
    with pytest.raises(Unauthorized) as late:
        await tokens.verify("job1", expired)
    assert late.value.code == "events_token_expired"


def test_loopback_and_the_refusal_to_start_open() -> None:
    assert all(map(loopback, ["127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"]))
    assert not any(map(loopback, ["0.0.0.0", "::", "10.0.0.5", "example.com", None]))

    def settings(**env: str) -> Settings:
        return load_settings(environ={f"RAG_{k.upper()}": v for k, v in env.items()}, dotenv=None)

    assert refusal(settings(), any_keys=False) is None
    assert refusal(settings(api_host="0.0.0.0"), any_keys=True) is None
    assert refusal(settings(api_host="0.0.0.0", api_auth="off"), any_keys=False) is None
    assert "keys create" in str(refusal(settings(api_host="0.0.0.0"), any_keys=False))


def test_a_principal_reads_writes_and_sees_only_what_its_key_allows() -> None:
    reader = Principal("k1", frozenset({"a"}), write=False, admin=False)
    assert reader.reads("a") and not reader.reads("b")
    assert reader.owns(b"k1") and not reader.owns("k2") and not reader.owns(None)
    assert reader.covers(frozenset({"a"})) and not reader.covers(None) and not reader.covers(frozenset({"a", "b"}))
    token = reader._replace(collections=frozenset(), job_id="j")
    assert not token.reads("a")
    open_ = Principal(None, None, True, True)
    assert open_.owns(None) and open_.owns("anyone") and open_.reads("b")
