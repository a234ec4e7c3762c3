"""Retrieval quality on the dossier-bench cases: the 22 PDFs indexed per case, its search queries evaluated.

``python -m bench.retrieval --write FILE.jsonl`` writes the development set only. The
set keeps each dossier-bench search query whose expected documents include a PDF (the
service indexes PDFs only), with the expected PDFs as gold files (byte-identical copies
included) and the case name as collection. dossier-bench gives documents, not pages, so
the set is scored at file level only. A second, generated set (bench.corpus: one
unique fact on every page amid filler) is scored at page level too.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections import Counter
from pathlib import Path

import msgspec

from bench.corpus import write_fact_pdfs
from bench.evaluate import Gold, evaluate
from bench.harness import Context, Row, service_env, settings_of, start_worker
from core.redis import connect
from ingest.producer import Producer


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


async def run(ctx: Context) -> list[Row]:
    cases = ["kite-launch"] if ctx.quick else None
    golds, pdfs, total = devset(cases)
    work = ctx.dir("retrieval")
    env = service_env(ctx.redis_url, ctx.prefix("retrieval"), work / "data")
    settings = settings_of(env)
    start_worker(ctx, env, work / "worker.log")
    redis = connect(settings.redis)
    failed: Counter[str] = Counter()
    pages = 0
    t0 = time.perf_counter()
    try:
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
    finally:
        await redis.aclose()
    report = await evaluate(settings, golds, collection=None, top_k=10)
    for result, gold in zip(report.results, golds):
        if result.file_rank != 1:
            print(f"#   dossier rank {result.file_rank}: {gold.query!r} ({gold.collection}) wants {gold.files}, "
                  f"got {result.retrieved[:3]}", file=sys.stderr)
    synthetic = await evaluate(settings, facts, collection="facts", top_k=10)
    pdf_count = sum(len(f) for f in pdfs.values())
    m = report.level("file")
    cells = ", ".join(f"{k} {m[k]:.3f}" for k in ("hit@1", "hit@5", "hit@10", "MRR"))
    why = (f"; {sum(failed.values())} PDFs not indexed: " + ", ".join(f"{c} x{n}" for c, n in failed.items())
           if failed else "")
    rows = [Row(bench="retrieval", measure=f"dossier-bench ({', '.join(pdfs)}): {len(golds)} of {total} queries "
                f"have a PDF among their expected documents; {pdf_count} PDFs, {pages} pages indexed in "
                f"{ingest_s:.0f} s{why}; file level (no page gold)",
                ours=f"{cells}; latency {report.latency()}", baseline="", ratio="")]
    for level in ("page", "file"):
        m = synthetic.level(level)
        cells = ", ".join(f"{k} {m[k]:.3f}" for k in ("hit@1", "hit@5", "hit@10", "MRR"))
        rows.append(Row(bench="retrieval", measure=f"generated facts (PDFs of 12 pages, one fact a page), "
                        f"{m['queries']} queries, {level} level", ours=f"{cells}; latency {synthetic.latency()}"))
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
