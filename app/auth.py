"""Who a request is: its API key's scope (or an events token's job), checked before any route runs.

A key comes as ``Authorization: Bearer <key>`` (what the OpenAI SDKs send) or ``X-API-Key: <key>``; a job's
events also take ``?token=`` (app.tokens), for browsers' EventSource, and a cited document's pages a page token,
for the links in an answer's citations that a browser follows from a chat client. Every request looks its key up in Redis
and takes a token from the key's bucket in the same round trip (core.apikeys): no cache, so a revoked key fails
at once on every API process, and the limit holds across them.

Safe by default (RAG_API_AUTH=auto): while no key exists, requests without one are answered, but only on a
loopback address; once one exists, every route but ``/healthz``, ``/readyz``, ``/metrics`` and the web page's
static file (``/``, which holds no data: it asks for the key) needs one. An API started on another address with
no key refuses to start (:func:`refusal`). RAG_API_AUTH=on always needs a key; off never does.

Routes read the request's :class:`Principal` (:func:`principal`) and check what they touch: a collection
(read, write), administering, a job's owner (another key's job is 404, as if it did not exist).
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import TYPE_CHECKING, Any, Final, NamedTuple
from urllib.parse import parse_qs, unquote

from litestar.enums import ScopeType

from app.errors import Forbidden, RateLimited, Unauthorized
from core.apikeys import parse_key
from core.payload import collection_name

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from litestar import Request
    from litestar.types import ASGIApp, Receive, Scope, Send

    from app.tokens import LinkTokens
    from core.apikeys import ApiKeys, Lookup
    from core.apikeys import Scope as KeyScope
    from core.settings import Settings

#: Paths answered without a key: health, metrics, and the web page's static file.
PUBLIC: Final = frozenset({"/healthz", "/readyz", "/metrics", "/"})
#: The one route an events token opens: a job's events.
_EVENTS = re.compile(r"^/v1/queries/([A-Za-z0-9_-]{1,64})/events$")
#: The one route a page token opens: a cited document's pages (the links in an answer's citations).
_PAGES = re.compile(r"^/v1/documents/([^/]{1,128})/pages/\d{1,9}$")


class Principal(NamedTuple):
    """What a request may do. ``key_id`` None: no key is needed here (RAG_API_AUTH=off, or no key exists and the
    request came over loopback), and everything is allowed."""

    key_id: str | None
    #: The collections it reads (and writes, with ``write``); None: every collection.
    collections: frozenset[str] | None
    write: bool
    admin: bool
    #: An events token's job: that job's events are all it may read.
    job_id: str | None = None
    #: A page token the request came with: the links of the page it opens carry it on.
    page_token: str | None = None

    def reads(self, collection: str) -> bool:
        return self.job_id is None and (self.collections is None or collection in self.collections)

    def check_read(self, collection: str) -> None:
        if not self.reads(collection):
            raise Forbidden(f"this API key may not read collection {collection!r}")

    def check_write(self, collection: str | None = None) -> None:
        """That it may upload and delete documents (in ``collection``, when named)."""
        if not self.write or self.job_id is not None:
            raise Forbidden("this API key may not upload or delete documents (keys create --write)")
        if collection is not None:
            self.check_read(collection)

    def check_admin(self) -> None:
        if not self.admin or self.job_id is not None:
            raise Forbidden("this API key may not administer (keys create --admin)")

    def owns(self, owner: str | bytes | None) -> bool:
        """Whether it may see a job whose record names ``owner`` (the key that created it, or none)."""
        if self.key_id is None:
            return True
        if isinstance(owner, bytes):
            owner = owner.decode()
        return owner == self.key_id

    def covers(self, collections: frozenset[str] | None) -> bool:
        """Whether every collection of ``collections`` (None: all) is one of its own."""
        if self.collections is None:
            return True
        return collections is not None and collections <= self.collections


#: No key needed here: everything allowed.
OPEN: Final = Principal(None, None, True, True)


def principal(request: Request[Any, Any, Any]) -> Principal:
    """The request's principal, which the middleware set (its absence is a bug: nothing is allowed then)."""
    found = request.scope.get("auth")
    if not isinstance(found, Principal):
        raise Unauthorized("no API key was checked for this route", code="missing_api_key")
    return found


def loopback(host: str | None) -> bool:
    """Whether an address (or host name) is loopback: reachable from this machine only."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def refusal(settings: Settings, any_keys: bool) -> str | None:
    """Why the API must not start (serving without keys on an address others reach), or None."""
    host = settings.api.host
    if settings.api.auth != "auto" or any_keys or loopback(host):
        return None
    return (f"RAG_API_HOST={host} is not a loopback address and no API key exists: create one with "
            "`python -m app keys create --name NAME --collections a,b` (or set RAG_API_AUTH=off to serve "
            "without keys on purpose)")


def _served_locally(scope: Scope) -> bool:
    """The connection came in on a loopback address (or a Unix socket: local processes only)."""
    server = scope.get("server")
    return server is not None and (server[1] is None or loopback(server[0]))


def _credential(scope: Scope) -> str | None:
    """The key a request presents: ``Authorization: Bearer``, else ``X-API-Key``. An Authorization header of
    another scheme presents no key of ours, so it is an invalid one (not a missing one)."""
    api_key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, rest = value.decode("latin-1").strip().partition(" ")
            return rest.strip() if scheme.lower() == "bearer" else value.decode("latin-1")
        if name == b"x-api-key":
            api_key = value.decode("latin-1").strip()
    return api_key


class Guard:
    """Finds a request's principal: the one Redis round trip of every request that needs a key."""

    def __init__(self, settings: Settings, keys: ApiKeys, tokens: LinkTokens) -> None:
        self._mode = settings.api.auth
        self._keys = keys
        self._tokens = tokens

    async def principal(self, scope: Scope) -> Principal:
        if self._mode == "off":
            return OPEN
        # Open only while no key exists, and only to a connection made over loopback.
        open_here = self._mode == "auto" and _served_locally(scope)
        credential = _credential(scope)
        if credential is not None:
            parsed = parse_key(credential)
            found = await self._keys.lookup(*parsed) if parsed else await self._keys.lookup(None, None)
            if parsed and found.scope is not None:
                return _admitted(parsed[0], found, found.scope)
            if open_here and not found.any_keys:
                return OPEN  # no key exists: what clients send anyway (the openai SDK needs one) is not checked
            raise Unauthorized("the API key is not valid: unknown, revoked or mistyped", code="invalid_api_key")
        token = _query_token(scope)
        if token is not None and (events := _EVENTS.fullmatch(scope["path"])):
            job_id = events.group(1)
            return await self._by_token(
                self._tokens.verify(job_id, token), open_here, lambda _: True,
                {"collections": frozenset(), "job_id": job_id},
                "the key this events token was issued to is revoked", "invalid_events_token")
        if token is not None and (pages := _PAGES.fullmatch(scope["path"])):
            collection = collection_name(_query_value(scope, "collection"))
            return await self._by_token(
                self._tokens.verify_page(unquote(pages.group(1)), collection, token), open_here,
                lambda scope: scope.collections is None or collection in scope.collections,
                {"collections": frozenset({collection}), "page_token": token},
                "the key this page link was made for is revoked, or no longer reads its collection",
                "invalid_page_token")
        if open_here and not (await self._keys.lookup(None, None)).any_keys:
            return OPEN
        raise Unauthorized("this API needs a key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
                           "(an administrator makes one with `python -m app keys create`)", code="missing_api_key")

    async def _by_token(self, verified: Awaitable[str], open_here: bool, still_reads: Callable[[KeyScope], bool],
                        narrowed: dict[str, Any], revoked: str, code: str) -> Principal:
        """The principal of a signed link (an events or a page token): its key's, narrowed to what the link opens,
        while the key exists and still reads it."""
        try:
            key_id = await verified
        except Unauthorized:
            if open_here and not (await self._keys.lookup(None, None)).any_keys:
                return OPEN
            raise
        found = await self._keys.lookup(key_id, None)
        if found.scope is not None and still_reads(found.scope):
            return _admitted(key_id, found, found.scope)._replace(write=False, admin=False, **narrowed)
        if open_here and not found.any_keys:
            return OPEN
        raise Unauthorized(revoked, code=code)


def _admitted(key_id: str, found: Lookup, scope: KeyScope) -> Principal:
    if found.wait_ms > 0:
        retry = max(1, math.ceil(found.wait_ms / 1000))
        raise RateLimited(f"this API key made more requests than its limit allows; retry in {retry} s",
                          retry_after_s=retry)
    return Principal(key_id, scope.collections, scope.write, scope.admin)


def _query_token(scope: Scope) -> str | None:
    return _query_value(scope, "token")


def _query_value(scope: Scope, name: str) -> str | None:
    raw = scope.get("query_string", b"")
    if name.encode() + b"=" not in raw:
        return None
    values = parse_qs(raw.decode("latin-1")).get(name)
    return values[0] if values else None


class AuthMiddleware:
    """Sets ``scope["auth"]`` (a Principal) on every route but the public ones, or answers 401/429."""

    def __init__(self, app: ASGIApp, guard: Callable[[], Guard]) -> None:
        self._app = app
        self._guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            path = scope["path"]
            if path not in PUBLIC and not path.startswith("/metrics/"):
                scope["auth"] = await self._guard().principal(scope)
        await self._app(scope, receive, send)
