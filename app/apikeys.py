"""``/v1/keys``: API keys managed over HTTP by an admin key, within its own reach: it sees, makes and revokes keys of
its collections only (one of every collection, ``*``, manages all), and grants no right it lacks itself.

``python -m app keys`` does the same from the command line, where Redis is reached directly.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT
from msgspec import Struct

from app.auth import Principal, principal
from app.errors import Forbidden, NotFound, documented
from core.apikeys import ApiKey, ApiKeys, check_collections, collections_scope


class NewKey(Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    #: Collection names, or ``["*"]`` for every collection.
    collections: list[str]
    write: bool = False
    admin: bool = False
    #: Its own requests per second and burst (default: RAG_LIMITS_KEY_RPS, RAG_LIMITS_KEY_BURST).
    rps: float | None = None
    burst: int | None = None


class CreatedKey(Struct, kw_only=True):
    #: The key to send (``Authorization: Bearer <key>``): shown this once, only its hash is kept.
    key: str
    api_key: ApiKey


class KeyList(Struct, kw_only=True):
    keys: list[ApiKey]


def managed(key: ApiKey, asking: Principal) -> bool:
    return asking.covers(collections_scope(key.collections))


class KeyController(Controller):
    path = "/v1/keys"
    tags = ("API keys",)

    @get("/", summary="API keys (an admin key's collections'): never their secrets", responses=documented(403))
    async def list_keys(self, api_keys: NamedDependency[ApiKeys], request: Request[Any, Any, Any]) -> KeyList:
        asking = principal(request)
        asking.check_admin()
        return KeyList(keys=[k for k in await api_keys.all() if managed(k, asking)])

    @post("/", status_code=HTTP_201_CREATED, summary="Make an API key; its secret is in this answer only",
          responses=documented(403))
    async def create_key(self, api_keys: NamedDependency[ApiKeys], data: JSONBody[NewKey],
                         request: Request[Any, Any, Any]) -> CreatedKey:
        asking = principal(request)
        asking.check_admin()
        collections = check_collections(data.collections)
        if not asking.covers(collections_scope(collections)):
            raise Forbidden("an admin key makes keys of its own collections only")
        if data.write:
            asking.check_write()
        key, secret = await api_keys.create(data.name, collections, write=data.write, admin=data.admin,
                                            rps=data.rps, burst=data.burst)
        return CreatedKey(key=secret, api_key=key)

    @delete("/{key_id:str}", status_code=HTTP_204_NO_CONTENT, summary="Revoke an API key: refused from its next request",
            responses=documented(403, 404))
    async def revoke_key(self, api_keys: NamedDependency[ApiKeys], key_id: FromPath[str],
                         request: Request[Any, Any, Any]) -> Response[None]:
        asking = principal(request)
        asking.check_admin()
        key = await api_keys.get(key_id)
        if key is None or not managed(key, asking) or not await api_keys.revoke(key_id):
            raise NotFound(f"no API key {key_id!r}", code="key_not_found")
        return Response(None, status_code=HTTP_204_NO_CONTENT)
