"""The API's handlers get their services by injection, one service each."""

from __future__ import annotations

from app.main import create_app
from core.settings import Settings


def test_every_handler_takes_at_most_one_service() -> None:
    # Litestar resolves a handler's several dependencies in a task group, a task each, on every request.
    app = create_app(Settings(log_level="warning"))
    handlers = [h for route in app.routes for h in route.route_handlers]  # type: ignore[attr-defined]
    assert handlers
    for handler in handlers:
        services = set(handler.resolve_dependencies()) & set(handler.parsed_fn_signature.parameters)
        assert len(services) <= 1, f"{handler}: {sorted(services)}"
