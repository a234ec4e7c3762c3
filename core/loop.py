"""Running a process's main coroutine: on uvloop where it is installed (Linux, macOS).

Under load most of a worker's CPU is the event loop's own machinery (tasks, futures,
callbacks, sockets): uvloop does that work in C.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # Windows: the standard loop
        return asyncio.run(main)
    return uvloop.run(main)
