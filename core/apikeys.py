"""API keys: created, listed and revoked (``python -m app keys``, or an admin key over HTTP), and looked up on
every request.

A key is ``rag_<id>_<secret>``: the id finds its record, the secret proves it. Only the SHA-256 of the secret
is stored, next to the key's name, collections, rights and limits. The secret is 256 random bits, so a fast
hash is enough: a slow password hash (bcrypt, Argon2) protects guessable passwords against guessing, which a
random secret is not, and would cost tens of milliseconds on every request. The digest the client's secret
hashes to is compared with the stored one by :func:`hmac.compare_digest` (constant time).

Every request looks its key up in Redis, without a cache: a revoked key fails at once on every API process.
The same script takes a token from the key's bucket (its requests per second, shared by every API process
because it lives in Redis), so a request with a key costs one round trip.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from enum import IntEnum
from typing import TYPE_CHECKING, Final, NamedTuple

from msgspec import Struct

from core.autopipeline import autopipeline
from core.errors import BadRequest
from core.lua import script
from core.payload import COLLECTION_NAME, COLLECTION_NAME_RULE
from core.protocol import now_ms

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.keys import Keys
    from core.settings import LimitSettings

#: What every key starts with (as OpenAI's start with ``sk-``): a key is recognisable in a config file or a leak.
KEY_PREFIX: Final = "rag_"
#: A key's ``collections`` entry that stands for every collection, present and future.
ALL_COLLECTIONS: Final = "*"
#: The field of a job's record (core.queue) that holds the id of the key that created the job.
OWNER: Final = "owner"

_KEY = re.compile(r"^rag_([0-9a-f]{12})_([A-Za-z0-9_-]{32,128})$")
_KEY_ID = re.compile(r"^[0-9a-f]{12}$")
_NAME_MAX = 100
#: The fields of a key's hash.
_HASH, _NAME, _COLLECTIONS, _WRITE, _ADMIN, _RPS, _BURST, _CREATED = (
    "hash", "name", "collections", "write", "admin", "rps", "burst", "created_ms")


class Found(IntEnum):
    """What the lookup script found for a key id and secret."""

    NO_KEY = 0
    WRONG_SECRET = 1
    KEY = 2


# The lookup and the token bucket in one step. KEYS: the set of key ids, the key's hash, its bucket.
# ARGV: the key id ('' for only whether any key exists), the SHA-256 of the secret presented ('' when an events
# token's signature proved the key instead), the default requests per second and burst.
# Answers {Found, any key exists, and when found: stored digest, collections, write, admin, ms to wait}. A wrong
# secret takes no token (nobody drains a key's bucket by knowing its id); the caller compares the digests again
# in constant time, which decides.
_LOOKUP = script("""
local any = redis.call('EXISTS', KEYS[1])
if ARGV[1] == '' then return {$NO_KEY, any} end
local k = redis.call('HMGET', KEYS[2], $HASH, $COLLECTIONS, $WRITE, $ADMIN, $RPS, $BURST)
if not k[1] then return {$NO_KEY, any} end
if ARGV[2] ~= '' and k[1] ~= ARGV[2] then return {$WRONG_SECRET, any} end
local rps = tonumber(k[5]) or tonumber(ARGV[3])
local burst = tonumber(k[6]) or tonumber(ARGV[4])
local wait = 0
if rps > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local b = redis.call('HMGET', KEYS[3], 'tokens', 'ms')
  local tokens = tonumber(b[1]) or burst
  local last = tonumber(b[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - last) * rps / 1000)
  if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rps) end
  redis.call('HSET', KEYS[3], 'tokens', tostring(tokens), 'ms', tostring(now))
  redis.call('PEXPIRE', KEYS[3], math.ceil(burst * 1000 / rps) + 1000)
end
return {$KEY, any, k[1], k[2], k[3], k[4], wait}
""", HASH=_HASH, COLLECTIONS=_COLLECTIONS, WRITE=_WRITE, ADMIN=_ADMIN, RPS=_RPS, BURST=_BURST,
    **{found.name: found for found in Found})


class ApiKey(Struct, frozen=True, kw_only=True):
    """A key as listed: everything but its secret, which is never stored."""

    id: str
    name: str
    #: The collections it reads (and writes, with ``write``); ``["*"]``: every collection.
    collections: list[str]
    write: bool = False
    admin: bool = False
    #: Its own requests per second and burst; None: RAG_LIMITS_KEY_RPS / RAG_LIMITS_KEY_BURST.
    rps: float | None = None
    burst: int | None = None
    created_ms: int = 0


class Scope(NamedTuple):
    """What a key may do: read its collections (None: every collection), write in them, administer."""

    collections: frozenset[str] | None
    write: bool
    admin: bool


class Lookup(NamedTuple):
    """A request's key as Redis knows it: ``scope`` when the key exists and its secret is right."""

    any_keys: bool
    scope: Scope | None = None
    #: How long the key must wait for its next request (its bucket is empty); 0: go ahead.
    wait_ms: int = 0


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(text: str) -> tuple[str, str] | None:
    """A presented key's (id, secret); None for anything that is not a key of this service."""
    match = _KEY.fullmatch(text.strip())
    return (match.group(1), match.group(2)) if match else None


def valid_key_id(text: str) -> bool:
    return bool(_KEY_ID.fullmatch(text))


def collections_scope(collections: list[str]) -> frozenset[str] | None:
    return None if ALL_COLLECTIONS in collections else frozenset(collections)


def check_collections(collections: list[str]) -> list[str]:
    """A key's collections, checked and deduplicated in order; BadRequest naming the bad one."""
    names = list(dict.fromkeys(c.strip() for c in collections if c.strip()))
    if not names:
        raise BadRequest("collections: name at least one (or '*' for every collection)", code="invalid_collection")
    for name in names:
        if name != ALL_COLLECTIONS and not COLLECTION_NAME.fullmatch(name):
            raise BadRequest(f"collections: {name!r} is not a collection name ({COLLECTION_NAME_RULE}, "
                             "or '*' for every collection)", code="invalid_collection")
    return [ALL_COLLECTIONS] if ALL_COLLECTIONS in names else names


def _bool(raw: bytes | None) -> bool:
    return raw == b"1"


class ApiKeys:
    """The keys in Redis: create, list, revoke, and the per-request lookup."""

    def __init__(self, redis: Redis, keys: Keys, limits: LimitSettings) -> None:
        self._redis = redis
        self._keys = keys
        self._limits = limits
        self._lookup = redis.register_script(_LOOKUP)

    async def create(self, name: str, collections: list[str], *, write: bool = False, admin: bool = False,
                     rps: float | None = None, burst: int | None = None) -> tuple[ApiKey, str]:
        """A new key and its secret, the one time the secret is known: ``(key, "rag_<id>_<secret>")``."""
        name = name.strip()
        if not name or len(name) > _NAME_MAX or not name.isprintable():
            raise BadRequest(f"name: 1 to {_NAME_MAX} printable characters", code="invalid_key_name")
        if rps is not None and rps < 0:
            raise BadRequest("rps: 0 (no limit) or more requests per second", code="invalid_key_limit")
        if burst is not None and burst < 1:
            raise BadRequest("burst: 1 request or more", code="invalid_key_limit")
        key = ApiKey(id=secrets.token_hex(6), name=name, collections=check_collections(collections), write=write,
                     admin=admin, rps=rps, burst=burst, created_ms=now_ms())
        secret = secrets.token_urlsafe(32)
        fields = {_HASH: digest(secret), _NAME: key.name, _COLLECTIONS: ",".join(key.collections),
                  _WRITE: int(write), _ADMIN: int(admin), _CREATED: key.created_ms}
        if rps is not None:
            fields[_RPS] = repr(float(rps))
        if burst is not None:
            fields[_BURST] = burst
        async with self._redis.pipeline(transaction=True) as pipe:  # one slot: the set, the hash, the bucket
            pipe.hset(self._keys.api_key(key.id), mapping=fields)
            pipe.sadd(self._keys.api_keys, key.id)
            await pipe.execute()
        return key, f"{KEY_PREFIX}{key.id}_{secret}"

    async def get(self, key_id: str) -> ApiKey | None:
        if not valid_key_id(key_id):
            return None
        raw: dict[bytes, bytes] = await self._redis.hgetall(self._keys.api_key(key_id))
        if not raw:
            return None
        rps, burst = raw.get(_RPS.encode()), raw.get(_BURST.encode())
        return ApiKey(id=key_id, name=raw.get(_NAME.encode(), b"").decode(),
                      collections=raw.get(_COLLECTIONS.encode(), b"").decode().split(","),
                      write=_bool(raw.get(_WRITE.encode())), admin=_bool(raw.get(_ADMIN.encode())),
                      rps=float(rps) if rps else None, burst=int(burst) if burst else None,
                      created_ms=int(raw.get(_CREATED.encode(), b"0")))

    async def all(self) -> list[ApiKey]:
        """Every key, oldest first."""
        ids = sorted(i.decode() for i in await self._redis.smembers(self._keys.api_keys))
        found = [key for key in [await self.get(i) for i in ids] if key is not None]
        return sorted(found, key=lambda k: (k.created_ms, k.id))

    async def revoke(self, key_id: str) -> bool:
        """Delete the key: the next request with it fails, on every API process. False if there was none."""
        if not valid_key_id(key_id):
            return False
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.api_key(key_id), self._keys.api_key_bucket(key_id))
            pipe.srem(self._keys.api_keys, key_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def any(self) -> bool:
        """Whether any key exists."""
        return bool(await self._redis.exists(self._keys.api_keys))

    async def lookup(self, key_id: str | None, secret: str | None) -> Lookup:
        """The key ``key_id`` if ``secret`` is its secret, its bucket charged; with ``secret`` None the caller
        proved the key otherwise (an events token it signed). With ``key_id`` None: only whether any key exists."""
        presented = digest(secret) if secret is not None else ""
        keys = [self._keys.api_keys, self._keys.api_key(key_id or "-"), self._keys.api_key_bucket(key_id or "-")]
        reply = await autopipeline(self._redis).script(
            self._lookup, keys, [key_id or "", presented, repr(float(self._limits.key_rps)), self._limits.key_burst])
        any_keys = bool(reply[1])
        if int(reply[0]) != Found.KEY:
            return Lookup(any_keys)
        stored, collections, write, admin, wait = reply[2:7]
        if secret is not None and not hmac.compare_digest(stored, presented.encode()):
            return Lookup(any_keys)
        return Lookup(any_keys, Scope(collections_scope((collections or b"").decode().split(",")), _bool(write),
                                      _bool(admin)), int(wait))
