"""Per-job events tokens: how a browser's EventSource, which cannot send headers, follows one job's events.

A token is ``<key id>.<expiry, Unix s>.<signature>``: an HMAC-SHA256 over the job id, the key id and the expiry
with a secret every API process shares through Redis (made once, by whichever process needs it first). Signed
rather than stored: creating a job writes nothing more, checking a token needs no Redis of its own, and it is
good for that one job's events only, until it expires (RAG_API_EVENTS_TOKEN_TTL_S). The key it names is still
looked up on every request it makes (app.auth), so revoking the key ends its tokens at once too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING

from app.errors import Unauthorized
from core.apikeys import valid_key_id

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.keys import Keys


class EventTokens:
    def __init__(self, redis: Redis, keys: Keys, ttl_s: int) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s
        self._secret: bytes | None = None

    async def secret(self, *, fresh: bool = False) -> bytes:
        """The shared secret: made by the first process that needs it, then read by every other."""
        if self._secret is None or fresh:
            await self._redis.set(self._keys.events_secret, secrets.token_bytes(32), nx=True)
            secret = await self._redis.get(self._keys.events_secret)
            assert secret is not None
            self._secret = bytes(secret)
        return self._secret

    async def issue(self, job_id: str, key_id: str) -> str:
        """A token for ``job_id``'s events, on behalf of key ``key_id``."""
        expires = int(time.time()) + self._ttl_s
        return f"{key_id}.{expires}.{_sign(await self.secret(), job_id, key_id, expires)}"

    async def verify(self, job_id: str, token: str) -> str:
        """The id of the key a token for ``job_id``'s events was issued to; Unauthorized otherwise."""
        key_id, _, rest = token.partition(".")
        raw_expires, _, signature = rest.partition(".")
        if not valid_key_id(key_id) or not raw_expires.isdigit() or not signature:
            raise Unauthorized("the events token is not one of this service's", code="invalid_events_token")
        expires = int(raw_expires)
        good = hmac.compare_digest(signature, _sign(await self.secret(), job_id, key_id, expires))
        if not good:  # the secret may have been made again (Redis emptied) since this process read it
            previous = self._secret
            if await self.secret(fresh=True) != previous:
                good = hmac.compare_digest(signature, _sign(await self.secret(), job_id, key_id, expires))
        if not good:
            raise Unauthorized("the events token is not valid for this job", code="invalid_events_token")
        if expires < time.time():
            raise Unauthorized("the events token has expired: GET the job (with its key) for a new one",
                               code="events_token_expired")
        return key_id


def _sign(secret: bytes, job_id: str, key_id: str, expires: int) -> str:
    mac = hmac.new(secret, f"events\n{job_id}\n{key_id}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
