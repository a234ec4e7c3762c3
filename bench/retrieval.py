"""Retrieval quality: the dev sets on real manuals (page level), dossier-bench (file level), generated facts.

Each dev collection (bench/devsets, fetched by bench.manuals from pinned Debian packages) is
indexed into its own collection by the real worker, and every question is asked once per arm
on the same index: the dense arm alone, the BM25 arm alone, both fused (what the service
does), and fused then reranked when the environment names a rerank endpoint
(RAG_RERANKER_BACKEND and RAG_RERANKER_BASE_URL). The fused ranking stands next to the
better single arm; retrieval latency (submit to ``sources``) stands next to the dense arm's,
which is how the service retrieved before hybrid search.

``python -m bench.retrieval --write FILE.jsonl`` writes the dossier-bench development set only.
dossier-bench gives documents, not pages, so that set is scored at file level; a generated set
(bench.corpus: one unique fact on every page amid filler) is scored at page level too.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from bench import manuals
from bench.corpus import write_fact_pdfs
from bench.evaluate import ARMS, Arm, Gold, Report, evaluate, read_jsonl
from bench.harness import Context, Row, pct, service_env, settings_of, start_worker
from core.redis import connect
from ingest.producer import Producer

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.settings import Settings

DEVSETS = Path(__file__).parent / "devsets"
#: collection -> its question sets: (file, what kind of question).
SETS = {
    "r-manuals": [("r-manuals-headings.jsonl", "section headings as questions"),
                  ("r-manuals-questions.jsonl", "questions in our own words")],
    "tex-manuals": [("tex-manuals-headings.jsonl", "section headings as questions"),
                    ("tex-manuals-questions.jsonl", "questions in our own words")],
}
#: --quick: the smaller manuals only, and the questions about them.
QUICK = {"r-manuals": {"R-exts.pdf", "R-intro.pdf", "R-lang.pdf", "R-admin.pdf"}}


def case_pdfs(case_dir: Path) -> list[Path]:
    return sorted(p for p in case_dir.rglob("*.pdf") if p.is_file())


def devset(cases: list[str] | None = None) -> tuple[list[Gold], dict[str, list[Path]], int]:
    """(gold lines, PDFs per case, dossier-bench queries in all) from the installed dossier-bench."""
    from dossier_bench.cases import Case, available

    golds: list[Gold] = []
    pdfs: dict[str, list[Path]] = {}
    total = 0
    for name in cases or available():
        case = Case.load(name)
        files = case_pdfs(case.dir)
        pdfs[name] = files
        digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
        same: dict[str, set[str]] = {}
        for file, h in digest.items():
            same.setdefault(h, set()).add(file)
        for query in case.expected.search:
            total += 1
            gold: set[str] = set()
            for key in query["expect"]:
                for file in case.expected.by_key.get(key, {}).get("files", []):
                    if file in digest:
                        gold |= same[digest[file]]
            if gold:
                ordered = sorted(gold)
                golds.append(Gold(query=query["query"], file=ordered[0], files=ordered, collection=name))
    return golds, pdfs, total


def cells(report: Report) -> str:
    m = report.level("page")
    return f"hit@1 {m['hit@1']:.3f}, hit@5 {m['hit@5']:.3f}, MRR {m['MRR']:.3f}"


def arms() -> list[Arm]:
    chosen = [ARMS["dense"], ARMS["sparse"], ARMS["heading"], ARMS["hybrid"]]
    if os.environ.get("RAG_RERANKER_BACKEND", "off") != "off" and os.environ.get("RAG_RERANKER_BASE_URL"):
        chosen.append(ARMS["rerank"])
    return chosen


async def dev_collections(ctx: Context, settings: Settings, redis: Redis) -> list[Row]:
    rows: list[Row] = []
    for name, sets in SETS.items():
        if ctx.quick and name not in QUICK:
            continue
        try:
            files = manuals.fetch(name)
        except manuals.FetchError as exc:  # say so: never a zero
            rows.append(Row(bench="retrieval", measure=f"{name}: not run", ours=f"not run: {exc}"[:300]))
            continue
        if ctx.quick:
            files = [f for f in files if f.name in QUICK[name]]
        t0 = time.perf_counter()
        results = await Producer(redis, settings, collection=name).run(files, lambda state, result: None)
        ingest_s = time.perf_counter() - t0
        failed = [r for r in results if r.status == "failed"]
        if failed:
            raise RuntimeError(f"{name}: ingest failed: {failed}")
        pages = sum(r.pages for r in results)
        chunks = sum(r.chunks for r in results)
        names = {f.name for f in files}
        for file, kind in sets:
            golds = [g for g in read_jsonl(DEVSETS / file) if g.gold_files & names]
            reports = {arm.name: await evaluate(settings, golds, collection=name, top_k=10, arm=arm)
                       for arm in arms()}
            where = (f"{name} ({len(files)} manuals, {pages:,} pages, {chunks:,} chunks, indexed in {ingest_s:.0f} s), "
                     f"{len(golds)} {kind} ({file}), page level")
            for arm, report in reports.items():
                rows.append(Row(bench="retrieval", measure=f"{where}: {arm}", ours=cells(report)))
            hybrid = reports["hybrid"]
            best = max(("dense", "sparse", "heading"), key=lambda a: (reports[a].level("page")["hit@1"],
                                                          reports[a].level("page")["MRR"]))
            gain = hybrid.level("page")["hit@1"] - reports[best].level("page")["hit@1"]
            rows.append(Row(bench="retrieval", measure=f"{where}: fused vs the better single arm ({best})",
                            ours=cells(hybrid), baseline=cells(reports[best]), ratio=f"hit@1 {gain:+.3f}"))
            lat = {a: pct([r.latency_s for r in reports[a].results], 50) * 1000 for a in ("dense", "hybrid")}
            rows.append(Row(bench="retrieval", measure=f"{where}: latency, submit to sources (p50, 1 in flight)",
                            ours=f"hybrid {lat['hybrid']:.1f} ms", baseline=f"dense only {lat['dense']:.1f} ms",
                            ratio=f"{lat['hybrid'] / lat['dense']:.2f}x"))
    return rows


async def run(ctx: Context) -> list[Row]:
    work = ctx.dir("retrieval")
    env = service_env(ctx.redis_url, ctx.prefix("retrieval"), work / "data")
    settings = settings_of(env)
    start_worker(ctx, env, work / "worker.log")
    redis = connect(settings.redis)
    try:
        rows = await dev_collections(ctx, settings, redis)
        rows += await dossier_and_facts(ctx, settings, redis, work)
    finally:
        await redis.aclose()
    return rows


async def dossier_and_facts(ctx: Context, settings: Settings, redis: Redis, work: Path) -> list[Row]:
    cases = ["kite-launch"] if ctx.quick else None
    golds, pdfs, total = devset(cases)
    failed: Counter[str] = Counter()
    pages = 0
    t0 = time.perf_counter()
    for name, files in pdfs.items():
        results = await Producer(redis, settings, collection=name).run(files, lambda state, result: None)
        failed.update(r.code or "failed" for r in results if r.status == "failed")
        pages += sum(r.pages for r in results)
    ingest_s = time.perf_counter() - t0
    facts = [msgspec.convert(g, Gold) for g in write_fact_pdfs(work / "facts", docs=1 if ctx.quick else 2,
                                                                         pages=12)]
    fact_files = sorted((work / "facts").glob("*.pdf"))
    results = await Producer(redis, settings, collection="facts").run(fact_files, lambda state, result: None)
    if any(r.status == "failed" for r in results):
        raise RuntimeError(f"ingest failed: {results}")
    report = await evaluate(settings, golds, collection=None, top_k=10)
    for result, gold in zip(report.results, golds):
        if result.file_rank != 1:
            print(f"#   dossier rank {result.file_rank}: {gold.query!r} ({gold.collection}) wants {gold.files}, "
                  f"got {result.retrieved[:3]}", file=sys.stderr)
    synthetic = await evaluate(settings, facts, collection="facts", top_k=10)
    pdf_count = sum(len(f) for f in pdfs.values())
    m = report.level("file")
    summary = ", ".join(f"{k} {m[k]:.3f}" for k in ("hit@1", "hit@5", "hit@10", "MRR"))
    why = (f"; {sum(failed.values())} PDFs not indexed: " + ", ".join(f"{c} x{n}" for c, n in failed.items())
           if failed else "")
    rows = [Row(bench="retrieval", measure=f"dossier-bench ({', '.join(pdfs)}): {len(golds)} of {total} queries "
                f"have a PDF among their expected documents; {pdf_count} PDFs, {pages} pages indexed in "
                f"{ingest_s:.0f} s{why}; file level (no page gold)",
                ours=f"{summary}; latency {report.latency()}", baseline="", ratio="")]
    for level in ("page", "file"):
        m = synthetic.level(level)
        summary = ", ".join(f"{k} {m[k]:.3f}" for k in ("hit@1", "hit@5", "hit@10", "MRR"))
        rows.append(Row(bench="retrieval", measure=f"generated facts (PDFs of 12 pages, one fact a page), "
                        f"{m['queries']} queries, {level} level", ours=f"{summary}; latency {synthetic.latency()}"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval", description=__doc__)
    parser.add_argument("--write", type=Path, required=True, metavar="FILE.jsonl", help="write the dev set here")
    args = parser.parse_args()
    golds, pdfs, total = devset()
    args.write.write_bytes(b"".join(msgspec.json.encode(g) + b"\n" for g in golds))
    print(f"{len(golds)} of {total} queries written to {args.write}; their PDFs:")
    for name, files in pdfs.items():
        for f in files:
            print(f"  {name}: {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
