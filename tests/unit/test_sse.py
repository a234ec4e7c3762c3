"""SSE framing of relayed events."""

from __future__ import annotations

from app.relay import KEEPALIVE, sse_event


def test_an_event_is_id_event_and_data_lines_then_a_blank_line() -> None:
    assert sse_event("1700000000000-0", "token", '{"text":"hi"}') == (
        b'id: 1700000000000-0\nevent: token\ndata: {"text":"hi"}\n\n'
    )


def test_multi_line_data_becomes_several_data_lines() -> None:
    assert sse_event("1-0", "x", "a\nb") == b"id: 1-0\nevent: x\ndata: a\ndata: b\n\n"
    assert sse_event("1-0", "x", "") == b"id: 1-0\nevent: x\ndata: \n\n"


def test_keepalive_is_a_comment() -> None:
    assert KEEPALIVE.startswith(b":") and KEEPALIVE.endswith(b"\n\n")
