from workers.tokens import TokenCoalescer


class Sink:
    def __init__(self) -> None:
        self.chunks: list[str] = []

    async def __call__(self, text: str) -> None:
        self.chunks.append(text)


async def test_first_token_alone_then_coalesced_then_final_flush():
    sink = Sink()
    tokens = TokenCoalescer(sink, interval_ms=10_000)
    await tokens.add("Hello")
    assert sink.chunks == ["Hello"]
    for delta in [",", " wor", "ld", "!"]:
        await tokens.add(delta)
    assert sink.chunks == ["Hello"]  # still inside the interval
    await tokens.flush()
    assert sink.chunks == ["Hello", ", world!"]
    assert tokens.flushes == 2
    assert "".join(sink.chunks) == tokens.answer == "Hello, world!"


async def test_flush_with_nothing_buffered_emits_nothing():
    sink = Sink()
    tokens = TokenCoalescer(sink, interval_ms=10_000)
    await tokens.flush()
    await tokens.add("a")
    await tokens.flush()
    assert sink.chunks == ["a"] and tokens.flushes == 1 and tokens.answer == "a"


async def test_zero_interval_flushes_every_token():
    sink = Sink()
    tokens = TokenCoalescer(sink, interval_ms=0)
    for delta in ["a", "b", "c"]:
        await tokens.add(delta)
    await tokens.flush()
    assert sink.chunks == ["a", "b", "c"]
    assert tokens.answer == "abc"
