"""Follow-up questions: dossier-bench's ``followup`` scenarios through ``POST /v1/chat/completions``, the whole
conversation sent each turn, with each way of making a follow-up standalone (RAG_CONVERSATION_STANDALONE).

The PDFs of each case with follow-up scenarios are indexed (one collection per case, OCR off)
and every scenario is played turn by turn, the service's own answers going back into the
conversation, as a chat client does. Per follow-up turn (the second and later), the scores:

- sources hold the facts: the share of the turn's ``must_facts`` found (bench.answers.fact_found, lenient)
  in the text of the retrieved sources (``search_results``): what retrieval found, whatever the generator
  does with it;
- answer holds the facts: the same, in the answer;
- time to sources: request to the first chunk (which carries the sources), p50: what making the question
  standalone costs.

Modes: ``off`` (the last question alone: the baseline), ``rule`` (the question and the earlier questions'
salient terms), with the extractive generator; and ``llm`` (SmolLM2 rewrites the follow-up, and answers)
when the local LLM is installed. The first turns, asked alike in every mode, are scored too (a sanity check).

``python -m bench followups`` runs it; ``python -m bench.followups --list`` prints the conversations.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

from bench.answers import fact_found
from bench.harness import Context, Row, list_main, pct, service_env, settings_of, start_api, start_worker
from core.redis import connect
from ingest.producer import Producer


class Turn(msgspec.Struct, frozen=True):
    question: str
    facts: list[str]


class Conversation(msgspec.Struct, frozen=True):
    case: str
    id: str
    turns: list[Turn]


class Asked(msgspec.Struct):
    sources: str = ""
    answer: str = ""
    to_sources_s: float | None = None
    error: str | None = None


def conversations() -> tuple[list[Conversation], dict[str, list[Path]]]:
    """The follow-up scenarios, and the PDFs of each case that has one."""
    from dossier_bench.cases import Case, available
    from dossier_bench.scenario import load_scenarios

    out: list[Conversation] = []
    pdfs: dict[str, list[Path]] = {}
    for name in available():
        case = Case.load(name)
        found = [sc for sc in load_scenarios(case.dir) if sc.group == "followup" and len(sc.turns) > 1]
        if not found:
            continue
        pdfs[name] = sorted(p for p in case.docs_dir.rglob("*.pdf") if p.is_file())
        for sc in found:
            out.append(Conversation(case=name, id=sc.id, turns=[
                Turn(t.content, list(((t.expect or {}).get("answer") or {}).get("must_facts") or [])) for t in sc.turns]))
    return out, pdfs


async def ask(http: httpx.AsyncClient, model: str, messages: list[dict[str, str]]) -> Asked:
    asked = Asked()
    sent = time.perf_counter()
    async with http.stream("POST", "/v1/chat/completions", json={"model": model, "messages": messages,
                                                                  "stream": True}) as response:
        if response.status_code != 200:
            asked.error = (await response.aread()).decode()[:300]
            return asked
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk: dict[str, Any] = json.loads(line[6:])
            if "error" in chunk:
                asked.error = chunk["error"]["message"]
            if "search_results" in chunk and asked.to_sources_s is None:
                asked.to_sources_s = time.perf_counter() - sent
                asked.sources = "\n".join(r["snippet"] for r in chunk["search_results"])
            for choice in chunk.get("choices") or []:
                asked.answer += choice["delta"].get("content") or ""
    return asked


async def play(http: httpx.AsyncClient, conversation: Conversation) -> list[Asked]:
    messages: list[dict[str, str]] = []
    out = []
    for turn in conversation.turns:
        messages.append({"role": "user", "content": turn.question})
        asked = await ask(http, conversation.case, messages)
        out.append(asked)
        messages.append({"role": "assistant", "content": asked.answer})
    return out


def score(convs: list[Conversation], played: list[list[Asked]], *, first: bool) -> dict[str, Any]:
    turns = [(t, a) for c, asks in zip(convs, played) for i, (t, a) in enumerate(zip(c.turns, asks))
             if (i == 0) == first]
    facts = [(f, a) for t, a in turns for f in t.facts]
    times = [a.to_sources_s for _, a in turns if a.to_sources_s is not None]
    return {"turns": len(turns), "facts": len(facts),
            "in_sources": sum(fact_found(f, a.sources) for f, a in facts) / max(1, len(facts)),
            "in_answer": sum(fact_found(f, a.answer) for f, a in facts) / max(1, len(facts)),
            "to_sources_p50": pct(times, 50) if times else None,
            "errors": sum(1 for _, a in turns if a.error)}


def cell(s: dict[str, Any]) -> str:
    time_cell = f"{s['to_sources_p50'] * 1000:,.0f} ms" if s["to_sources_p50"] is not None else "no sources"
    return (f"sources hold {s['in_sources']:.0%} of {s['facts']} must-facts, answers {s['in_answer']:.0%}; "
            f"time to sources p50 {time_cell}" + (f"; {s['errors']} errors" if s["errors"] else ""))


async def run(ctx: Context) -> list[Row]:
    convs, pdfs = conversations()
    if ctx.quick:
        convs = [c for c in convs if c.case == "harbor-dispute"]
        pdfs = {"harbor-dispute": pdfs["harbor-dispute"]}
    work = ctx.dir("followups")
    prefix = ctx.prefix("followups")
    env = service_env(ctx.redis_url, prefix, work / "data", llm_backend="extractive", ingest_ocr="false",
                      llm_temperature="0")
    modes: list[tuple[str, dict[str, str]]] = [
        ("off (the last question alone), extractive", {**env, "RAG_CONVERSATION_STANDALONE": "off"}),
        ("rule, extractive", {**env, "RAG_CONVERSATION_STANDALONE": "rule"})]
    if not ctx.quick:
        try:
            from bench.llm import start_llm

            _, llm_url = start_llm(ctx, work / "llm.log", interrupt=False)
            modes.append(("llm (SmolLM2 rewrites, and answers)", {
                **env, "RAG_CONVERSATION_STANDALONE": "llm", "RAG_LLM_BACKEND": "openai", "RAG_LLM_BASE_URL": llm_url,
                "RAG_LLM_MODEL": "smollm2"}))
        except ImportError:
            pass
    worker = start_worker(ctx, env, work / "worker-index.log")
    redis = connect(settings_of(env).redis)
    try:
        for case, files in pdfs.items():
            await Producer(redis, settings_of(env), collection=case).run(files, lambda state, result: None)
    finally:
        await redis.aclose()
    worker.stop()
    api, url = start_api(ctx, env, work / "api.log")
    rows: list[Row] = []
    results: dict[str, list[list[Asked]]] = {}
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        for i, (name, menv) in enumerate(modes):
            worker = start_worker(ctx, menv, work / f"worker-{i}.log")
            await ask(http, convs[0].case, [{"role": "user", "content": convs[0].turns[0].question}])  # warm-up
            results[name] = [await play(http, c) for c in convs]
            worker.stop()
            for c, asks in zip(convs, results[name]):
                for a in asks:
                    if a.error:
                        print(f"#   followups {name}: {c.id}: {a.error}", file=sys.stderr)
    api.stop()
    baseline = score(convs, results[modes[0][0]], first=False)
    label = f"{sum(len(c.turns) - 1 for c in convs)} follow-up turns of {len(convs)} dossier-bench conversations"
    for name, played in results.items():
        s = score(convs, played, first=False)
        ratio = (f"{s['in_sources'] / baseline['in_sources']:.2f}× facts in sources" if baseline["in_sources"]
                 else "baseline found none")
        rows.append(Row(bench="followups", measure=f"{label}, standalone {name}", ours=cell(s),
                        baseline="" if name == modes[0][0] else cell(baseline),
                        ratio="" if name == modes[0][0] else ratio))
    first = score(convs, results[modes[0][0]], first=True)
    rows.append(Row(bench="followups", measure=f"the same conversations' {first['turns']} first turns (no history)",
                    ours=cell(first)))
    return rows


def main(argv: list[str] | None = None) -> int:
    return list_main(argv, module="followups", doc=__doc__, items=list(conversations()[0]), noun="conversations")


if __name__ == "__main__":
    raise SystemExit(main())
