"""Signed links: how a browser, which cannot send headers on an EventSource or on a link it follows, reads one
job's events or one cited document's pages.

A token is ``<key id>.<expiry, Unix s>.<signature>``: an HMAC-SHA256 over what it opens (an events token: the
job id; a page token: the document id and its collection), the key id and the expiry, with a secret every API
process shares through Redis (made once, by whichever process needs it first). Signed rather than stored:
making one writes nothing, checking one needs no Redis of its own, and it opens that one thing only, until it
expires (RAG_API_EVENTS_TOKEN_TTL_S; RAG_API_PAGE_LINK_TTL_S for the page links in citations, which chat
clients keep in their history). The key it names is still looked up on every request it makes (app.auth), so
revoking the key ends its tokens at once too.
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


class LinkTokens:
    def __init__(self, redis: Redis, keys: Keys, ttl_s: int, page_ttl_s: int) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s
        self._page_ttl_s = page_ttl_s
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
        return _token(await self.secret(), _events(job_id), key_id, self._ttl_s)

    async def verify(self, job_id: str, token: str) -> str:
        """The id of the key a token for ``job_id``'s events was issued to; Unauthorized otherwise."""
        return await self._verify(_events(job_id), token, "events", "this job")

    def page(self, secret: bytes, document_id: str, collection: str, key_id: str) -> str:
        """A token for a document's pages in ``collection`` (``secret`` from :meth:`secret`: one await for the
        many links of an answer's citations)."""
        return _token(secret, _pages(document_id, collection), key_id, self._page_ttl_s)

    async def verify_page(self, document_id: str, collection: str, token: str) -> str:
        """The id of the key a page token for this document in ``collection`` was issued to; Unauthorized
        otherwise."""
        return await self._verify(_pages(document_id, collection), token, "page", "this document")

    async def _verify(self, subject: str, token: str, kind: str, what: str) -> str:
        key_id, _, rest = token.partition(".")
        raw_expires, _, signature = rest.partition(".")
        if not valid_key_id(key_id) or not raw_expires.isdigit() or not signature:
            raise Unauthorized(f"the {kind} token is not one of this service's", code=f"invalid_{kind}_token")
        expires = int(raw_expires)
        good = hmac.compare_digest(signature, _sign(await self.secret(), subject, key_id, expires))
        if not good:  # the secret may have been made again (Redis emptied) since this process read it
            previous = self._secret
            if await self.secret(fresh=True) != previous:
                good = hmac.compare_digest(signature, _sign(await self.secret(), subject, key_id, expires))
        if not good:
            raise Unauthorized(f"the {kind} token is not valid for {what}", code=f"invalid_{kind}_token")
        if expires < time.time():
            raise Unauthorized(f"the {kind} token has expired: ask again with the key for a new one",
                               code=f"{kind}_token_expired")
        return key_id


def _events(job_id: str) -> str:
    return f"events\n{job_id}"


def _pages(document_id: str, collection: str) -> str:
    return f"pages\n{document_id}\n{collection}"


def _token(secret: bytes, subject: str, key_id: str, ttl_s: int) -> str:
    expires = int(time.time()) + ttl_s
    return f"{key_id}.{expires}.{_sign(secret, subject, key_id, expires)}"


def _sign(secret: bytes, subject: str, key_id: str, expires: int) -> str:
    mac = hmac.new(secret, f"{subject}\n{key_id}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
