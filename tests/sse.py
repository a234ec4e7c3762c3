"""Parsing Server-Sent Events the way a client sees them."""

from __future__ import annotations

import json
from typing import Any

from msgspec import Struct


class SSE(Struct):
    id: str | None
    event: str
    data: dict[str, Any]


def parse_sse(text: str) -> list[SSE]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, list[str]] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))
        if "data" in fields:
            events.append(SSE(fields.get("id", [None])[0], fields.get("event", ["message"])[0],
                              json.loads("\n".join(fields["data"]))))
    return events
