"""``python -m bench.evaluate FILE.jsonl --collection NAME``: retrieval quality of a running service.

Each JSONL line: ``{"query": ..., "file": "a.pdf", "page": 3}``; optionally ``"pages": [3, 4]``
for several gold pages, ``"files": [...]`` for several gold files (byte-identical copies,
say) and ``"collection"`` to override ``--collection``. A line without a page counts at file
level only. Questions go through the query stream of the service that the RAG_* settings
name (RAG_REDIS_URL, RAG_REDIS_PREFIX) and are answered by its workers; only the
``sources`` event is read (run the workers with RAG_LLM_BACKEND=extractive to spare an LLM).

Ranks: at page level, the first retrieved chunk of a gold file whose page span holds a
gold page; at file level, the first gold file among the distinct files in retrieval
order. hit@k is the share of questions ranked within k; MRR is the mean of 1/rank (0 when
not retrieved within --top-k). Latency is from submitting to the ``sources`` event.

``--arms dense,sparse,heading,hybrid,rerank`` asks every question once per arm on the same
indexed collection: the dense arm alone, BM25 over the chunks alone, BM25 over section headings
alone, all fused, and all fused then reranked (needs RAG_RERANKER_* on the workers); ``service``
is whatever the workers are configured to do. One table shows them side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from bench.harness import StreamClient, pct
from core.protocol import EventKind, Retrieval, Sources, decode_event
from core.settings import Settings, SettingsError, load_settings


class Gold(msgspec.Struct, kw_only=True, omit_defaults=True):
    query: str
    file: str | None = None
    files: list[str] = []
    page: int | None = None
    pages: list[int] = []
    collection: str | None = None

    @property
    def gold_files(self) -> set[str]:
        return set(self.files) | ({self.file} if self.file else set())

    @property
    def gold_pages(self) -> set[int]:
        return set(self.pages) | ({self.page} if self.page is not None else set())


class Result(msgspec.Struct, kw_only=True):
    query: str
    file_rank: int | None
    page_rank: int | None
    has_pages: bool
    latency_s: float
    retrieved: list[str]


class Arm(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    retrieval: Retrieval | None = None
    rerank: bool | None = None


ARMS: dict[str, Arm] = {
    "service": Arm(name="service"),
    "dense": Arm(name="dense", retrieval="dense", rerank=False),
    "sparse": Arm(name="sparse", retrieval="sparse", rerank=False),
    "heading": Arm(name="heading", retrieval="heading", rerank=False),
    "hybrid": Arm(name="hybrid", retrieval="hybrid", rerank=False),
    "rerank": Arm(name="hybrid + rerank", retrieval="hybrid", rerank=True),
}


class Report(msgspec.Struct, kw_only=True):
    results: list[Result]
    top_k: int
    arm: str = "service"

    def level(self, name: str) -> dict[str, Any]:
        if name == "page":
            ranks = [r.page_rank for r in self.results if r.has_pages]
        else:
            ranks = [r.file_rank for r in self.results]
        n = len(ranks)
        out: dict[str, Any] = {"queries": n}
        for k in (1, 5, 10):
            # Nothing past --top-k was retrieved: hit@k for a larger k would be a floor, not a figure.
            ok = n and k <= self.top_k
            out[f"hit@{k}"] = sum(1 for r in ranks if r is not None and r <= k) / n if ok else None
        out["MRR"] = sum(1 / r for r in ranks if r is not None) / n if n else None
        return out

    def latency(self) -> str:
        lat = [r.latency_s for r in self.results]
        return f"p50 {pct(lat, 50) * 1000:.0f} ms, p99 {pct(lat, 99) * 1000:.0f} ms"

    def rows(self) -> list[str]:
        lines = []
        for name in ("page", "file"):
            m = self.level(name)
            if not m["queries"]:
                continue
            cells = ["n/a" if m[c] is None else f"{m[c]:.3f}" for c in ("hit@1", "hit@5", "hit@10", "MRR")]
            lines.append(f"| {self.arm} | {name} | {m['queries']} | " + " | ".join(cells) + f" | {self.latency()} |")
        return lines

    def table(self) -> str:
        return table([self])


def table(reports: list[Report]) -> str:
    top_k = reports[0].top_k if reports else 10
    lines = [f"| arm | level | queries | hit@1 | hit@5 | hit@10 | MRR@{top_k} | latency (submit to sources) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for report in reports:
        lines += report.rows()
    return "\n".join(lines)


def rank(gold: Gold, sources: list[Any]) -> tuple[int | None, int | None]:
    files = gold.gold_files
    pages = gold.gold_pages
    page_rank = None
    for i, s in enumerate(sources, start=1):
        if s.file in files and any(s.page <= p <= s.page_end for p in pages):
            page_rank = i
            break
    distinct: list[str] = []
    for s in sources:
        if s.file not in distinct:
            distinct.append(s.file)
    file_rank = next((i for i, f in enumerate(distinct, start=1) if f in files), None)
    return file_rank, page_rank


def read_jsonl(path: Path) -> list[Gold]:
    golds = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            gold = msgspec.json.decode(line, type=Gold)
        except msgspec.DecodeError as exc:
            raise SystemExit(f"{path}:{number}: {exc}") from None
        if not gold.gold_files:
            raise SystemExit(f"{path}:{number}: no \"file\" (or \"files\")")
        golds.append(gold)
    return golds


async def evaluate(settings: Settings, golds: list[Gold], *, collection: str | None, top_k: int = 10,
                   concurrency: int = 1, arm: Arm = ARMS["service"]) -> Report:
    client = StreamClient(settings)
    results: list[Result | None] = [None] * len(golds)
    todo = list(enumerate(golds))

    async def runner() -> None:
        while todo:
            i, gold = todo.pop(0)
            t0 = time.perf_counter()
            job_id = await client.submit(gold.query, top_k=top_k, collection=gold.collection or collection,
                                         retrieval=arm.retrieval, rerank=arm.rerank)
            events = await client.until(job_id, stop=frozenset({EventKind.SOURCES, EventKind.ERROR, EventKind.CANCELLED}))
            latency = time.perf_counter() - t0
            kind, data = events[-1]
            if kind != "sources":
                raise RuntimeError(f"query {gold.query!r} failed: {data!r}")
            event = decode_event(data)
            assert isinstance(event, Sources)
            file_rank, page_rank = rank(gold, event.sources)
            results[i] = Result(query=gold.query, file_rank=file_rank, page_rank=page_rank,
                                has_pages=bool(gold.gold_pages), latency_s=latency,
                                retrieved=[f"{s.file}#{s.page}" for s in event.sources])

    try:
        await asyncio.gather(*(runner() for _ in range(concurrency)))
    finally:
        await client.aclose()
    return Report(results=[r for r in results if r is not None], top_k=top_k, arm=arm.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, metavar="FILE.jsonl")
    parser.add_argument("--collection", default=None, help="the indexed collection (default: the service's)")
    parser.add_argument("--top-k", type=int, default=10, help="sources retrieved per question (default 10)")
    parser.add_argument("--concurrency", type=int, default=1, help="questions in flight (default 1)")
    parser.add_argument("--arms", default="service",
                        help="comma-separated: service, dense, sparse, heading, hybrid, rerank (default: service)")
    parser.add_argument("--misses", action="store_true",
                        help="also list the questions whose gold page (or file) was not first, per arm")
    args = parser.parse_args(argv)
    try:
        arms = [ARMS[name.strip()] for name in args.arms.split(",") if name.strip()]
    except KeyError as exc:
        parser.error(f"unknown arm {exc}; known: {', '.join(ARMS)}")
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    golds = read_jsonl(args.file)

    async def run_all() -> list[Report]:
        return [await evaluate(settings, golds, collection=args.collection, top_k=args.top_k,
                               concurrency=args.concurrency, arm=arm) for arm in arms]

    reports = asyncio.run(run_all())
    print(table(reports))
    if args.misses:
        for report in reports:
            for r, gold in zip(report.results, golds):
                rank_ = r.page_rank if r.has_pages else r.file_rank
                if rank_ != 1:
                    want = f"{sorted(gold.gold_files)}#{sorted(gold.gold_pages)}"
                    print(f"- {report.arm}: rank {rank_}: {r.query!r} wants {want}, got {', '.join(r.retrieved[:3])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
