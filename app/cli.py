"""``python -m app``: serve the API with uvicorn on RAG_API_HOST:RAG_API_PORT;
``python -m app keys create|list|revoke``: manage its API keys (core.apikeys) in Redis."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import TYPE_CHECKING

import msgspec
import uvicorn
from redis.exceptions import RedisError

from core.errors import RagError
from core.settings import Settings, load_or_exit

if TYPE_CHECKING:
    from app.main import Services
    from core.apikeys import ApiKeys


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m app", description=(
        "Serve the API (no command), or manage its API keys (keys). Settings: RAG_* variables (README)."))
    commands = root.add_subparsers(dest="command")
    keys = commands.add_parser("keys", help="create, list and revoke API keys").add_subparsers(dest="action",
                                                                                               required=True)
    create = keys.add_parser("create", help="make a key; its secret is printed this once (only its hash is kept)")
    create.add_argument("--name", required=True, help="who or what it is for")
    create.add_argument("--collections", required=True,
                        help="the collections it reads, comma-separated ('*': every collection)")
    create.add_argument("--write", action="store_true", help="it may also upload and delete documents in them")
    create.add_argument("--admin", action="store_true", help="it may also see dead letters, requeue them and "
                        "manage the keys of its collections")
    create.add_argument("--rps", type=float, help="its requests per second (default RAG_LIMITS_KEY_RPS; 0: no limit)")
    create.add_argument("--burst", type=int, help="its burst (default RAG_LIMITS_KEY_BURST)")
    create.add_argument("--json", action="store_true", help="print JSON")
    listing = keys.add_parser("list", help="every key: id, name, collections, rights, limits (never a secret)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = keys.add_parser("revoke", help="delete a key: every API process refuses it from its next request")
    revoke.add_argument("id", help="the key's id (keys list shows it)")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = load_or_exit()
    if args.command == "keys":
        from core.loop import run

        return run(keys_command(settings, args))
    return serve(settings)


def serve(settings: Settings) -> int:
    from app.main import Services, create_app  # after the settings: a bad one stops the process at once
    from core.loop import run

    problem = run(_refusal(settings))
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    services = Services(settings)
    config = uvicorn.Config(
        create_app(settings, services),
        host=settings.api.host,
        port=settings.api.port,
        log_level=settings.log_level,
        # A last resort: streams are ended cleanly first (see GracefulServer).
        timeout_graceful_shutdown=5,
    )
    server = GracefulServer(config, services)
    # uvicorn installs its own SIGINT/SIGTERM handlers while it serves, then puts these back and raises
    # the signal it caught again, for them: a stop asked for is a clean exit (status 0, as the worker's).
    # A signal before it serves stops it as soon as it has started.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, server.stop_asked)
    server.run()
    return 0


async def _refusal(settings: Settings) -> str | None:
    """Why the API must not start: no key, on an address others reach (app.auth). Redis down: it starts, and
    refuses requests without a key unless they come over loopback."""
    from app.auth import refusal

    if settings.api.auth != "auto":
        return None
    try:
        async with _api_keys(settings) as api_keys:
            return refusal(settings, await api_keys.any())
    except (RedisError, OSError):
        return refusal(settings, any_keys=True)


@asynccontextmanager
async def _api_keys(settings: Settings) -> AsyncIterator[ApiKeys]:
    from core.apikeys import ApiKeys
    from core.keys import Keys
    from core.redis import connect

    redis = connect(settings.redis)
    try:
        yield ApiKeys(redis, Keys(settings.redis.prefix), settings.limits)
    finally:
        await redis.aclose()


async def keys_command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        async with _api_keys(settings) as api_keys:
            if args.action == "create":
                collections = args.collections.split(",")
                key, secret = await api_keys.create(args.name, collections, write=args.write, admin=args.admin,
                                                    rps=args.rps, burst=args.burst)
                if args.json:
                    print(json.dumps({"key": secret, "api_key": msgspec.to_builtins(key)}))
                else:
                    print(f"id:  {key.id}\nkey: {secret}\n"
                          "Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'. It is shown this once: "
                          "only its hash is kept.")
            elif args.action == "list":
                found = await api_keys.all()
                if args.json:
                    print(json.dumps([msgspec.to_builtins(k) for k in found]))
                else:
                    for k in found:
                        rights = ",".join(r for r, on in (("read", True), ("write", k.write), ("admin", k.admin)) if on)
                        limits = f"{k.rps if k.rps is not None else 'default'} rps, burst " \
                                 f"{k.burst if k.burst is not None else 'default'}"
                        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created_ms / 1000))
                        print(f"{k.id}  {k.name}  collections={','.join(k.collections)}  {rights}  {limits}  "
                              f"created {created}")
                    if not found:
                        print("no API keys: the API answers without one, on loopback only")
            elif not await api_keys.revoke(args.id):
                print(f"error: no API key {args.id!r}", file=sys.stderr)
                return 1
            else:
                print(f"revoked {args.id}")
    except RagError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except (RedisError, OSError) as exc:
        print(f"error: Redis at RAG_REDIS_URL is unreachable: {exc}", file=sys.stderr)
        return 1
    return 0


class GracefulServer(uvicorn.Server):
    """On SIGTERM/SIGINT, end every open SSE stream cleanly before uvicorn drains connections.

    Clients see a finished response and resume elsewhere with Last-Event-ID.
    """

    def __init__(self, config: uvicorn.Config, services: Services) -> None:
        super().__init__(config)
        self._services = services

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._services.end_streams()
        super().handle_exit(sig, frame)

    def stop_asked(self, sig: int, frame: FrameType | None) -> None:
        self.should_exit = True
