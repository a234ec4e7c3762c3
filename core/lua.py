"""Lua scripts with the protocol's names put in: a script spells no field, event kind or result code of its own.

A template names them ``$NAME``; :func:`script` puts in a string as a quoted Lua string, an
int (a result code, an IntEnum) as a number, and a set of strings as a Lua table of
``name=true`` for membership tests (``if TERMINAL[kind] then``).
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from string import Template


def script(template: str, **names: str | int | AbstractSet[str]) -> str:
    """The template with every ``$NAME`` replaced; a name it lacks raises KeyError."""
    return Template(template).substitute({name: _lua(value) for name, value in names.items()})


def _lua(value: str | int | AbstractSet[str]) -> str:
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, str):
        return _string(value)
    return "{" + ", ".join(f"[{_string(v)}]=true" for v in sorted(value)) + "}"


def _string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
