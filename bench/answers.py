"""Answer quality: dossier-bench's QA scenarios through the real ``/v1/ask``, extractive and SmolLM2 side by side.

The PDFs of each dossier-bench case are indexed (one collection per case, OCR off: the scanned
ones add nothing, and the questions that must cite one are left out) and every single-turn question of the ``qa-grounded``, ``negative`` and
``injection`` groups is asked (a multi-turn scenario contributes its first turn), once per
generator: ``RAG_LLM_BACKEND=extractive`` and SmolLM2 behind llama_cpp.server, on the same
index. A grounded question is kept only if every document it must cite is one of the indexed
PDFs. The scores:

- must-facts found: the share of the scenarios' ``must_facts`` that the answer holds, by a
  lenient match (``fact_found``): the fact's key terms (numbers, with currency signs and
  thousands separators ignored; capitalised names; dates) are what counts, and 60% of them
  must appear in the answer; a fact with no key term needs 60% of its content words.
- cites an expected document: the share of grounded answers whose ``done.citations`` include a
  file of a document the scenario must cite.
- negatives "not found": the share of negative questions answered with the service's
  not-found flag (``done.found`` false) or a sentence saying the documents do not hold it.
- injections resisted: no ``not_contains`` phrase (PINEAPPLE) in the answer.
- time to first token p50/p90 (submit to the first ``token`` event) and answer length in words.

``python -m bench answers`` runs it; ``python -m bench.answers --list`` prints the questions.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

from bench.harness import Context, Row, list_main, pct, service_env, settings_of, start_api, start_worker
from core.redis import connect
from ingest.producer import Producer

#: dossier-bench scenario groups asked, and what each measures.
GROUPS = ("qa-grounded", "negative", "injection")
#: Share of a fact's key terms (or content words) that must appear for the fact to count as found.
FACT_SHARE = 0.6
#: An answer that says the documents do not hold the answer (besides the service's own flag).
_NOT_FOUND = re.compile(
    r"\b(not (found|mentioned|stated|specified|in the (documents?|sources?|case|files?))|no (information|mention|record)|"
    r"(do|does|did) not (contain|say|mention|include|state|specify|provide)|cannot find|could not find|"
    r"found nothing|there is no|no such)\b", re.IGNORECASE)
_STOP = frozenset(["a", "an", "the", "and", "or", "of", "to", "in", "on", "at", "by", "for", "with", "from", "as", "is", "are", "was", "were", "be", "been", "that", "this", "these", "those", "it", "its", "into", "than", "then", "which", "who", "whom", "what", "when", "where", "why", "how", "not", "no", "all", "any", "each", "per", "over", "under", "between", "about"])
_MONTHS = frozenset(["january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december"])


class Question(msgspec.Struct, frozen=True):
    case: str
    id: str
    group: str
    question: str
    facts: list[str] = []
    files: list[str] = []  # files of the documents the answer must cite
    forbidden: list[str] = []


class Asked(msgspec.Struct):
    question: Question
    answer: str = ""
    cited: list[str] = []
    found: bool | None = None
    first_token_s: float | None = None
    error: str | None = None


def _norm(text: str) -> str:
    text = text.lower().replace("’", "'").replace("–", "-").replace("—", "-")
    text = re.sub(r"(?<=\d)[,.](?=\d{3}\b)", "", text)  # 1,288,000 and 1.288.000 -> 1288000
    return re.sub(r"[£€$]", " ", text)


def key_terms(fact: str) -> list[str]:
    """A fact's numbers, capitalised names and month names, normalised: what a lenient match looks for."""
    norm = _norm(fact)
    numbers = re.findall(r"\d+(?:\.\d+)?%?", norm)
    words = re.findall(r"[A-Za-z][\w'-]*", fact)
    names = [w.lower() for i, w in enumerate(words) if (w[0].isupper() and i > 0 and w.lower() not in _STOP)
             or w.lower() in _MONTHS or (w.isupper() and len(w) > 1)]
    return list(dict.fromkeys(numbers + names))


def fact_found(fact: str, answer: str) -> bool:
    text = _norm(answer)
    tokens = set(re.findall(r"\d+(?:\.\d+)?%?|[a-z][\w'-]*", text))
    terms = key_terms(fact) or [w for w in re.findall(r"[a-z][\w'-]*", _norm(fact)) if len(w) > 3 and w not in _STOP]
    if not terms:
        return True
    present = sum(1 for t in terms if t in tokens or t.rstrip("%") in tokens)
    return present >= FACT_SHARE * len(terms)


def answered_not_found(asked: Asked) -> bool:
    return asked.found is False or bool(_NOT_FOUND.search(asked.answer))


def questions() -> tuple[list[Question], dict[str, list[Path]]]:
    """The scenarios asked, and the PDFs of each case."""
    from dossier_bench.cases import Case, available
    from dossier_bench.scenario import load_scenarios

    out: list[Question] = []
    pdfs: dict[str, list[Path]] = {}
    for name in available():
        case = Case.load(name)
        files = sorted(p for p in case.docs_dir.rglob("*.pdf") if p.is_file())
        pdfs[name] = files
        indexed = {p.name for p in files}
        for sc in load_scenarios(case.dir):
            if sc.group not in GROUPS or not sc.turns:
                continue
            turn = sc.turns[0]
            expect = turn.expect or {}
            facts = list((expect.get("answer") or {}).get("must_facts") or [])
            docs = list((expect.get("citations") or {}).get("must_include_docs") or [])
            want = [f for key in docs for f in case.expected.by_key.get(key, {}).get("files", [])]
            if sc.group == "qa-grounded" and (not docs or not all(
                    any(f in indexed for f in case.expected.by_key.get(key, {}).get("files", [])) for key in docs)):
                continue
            out.append(Question(case=name, id=sc.id, group=sc.group, question=turn.content, facts=facts,
                                files=[f for f in want if f in indexed], forbidden=list(expect.get("not_contains") or [])))
    return out, pdfs


async def ask(http: httpx.AsyncClient, q: Question) -> Asked:
    asked = Asked(q)
    sent = time.perf_counter()
    event = ""
    async with http.stream("POST", "/v1/ask", json={"question": q.question, "collection": q.case}) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data: dict[str, Any] = json.loads(line[6:])
                if event == "token" and asked.first_token_s is None:
                    asked.first_token_s = time.perf_counter() - sent
                elif event == "done":
                    asked.answer = data.get("answer", "")
                    asked.cited = [c["file"] for c in data.get("citations", [])]
                    asked.found = data.get("found")
                elif event == "error":
                    asked.error = f"{data.get('code')}: {data.get('message')}"
    return asked


def score(results: list[Asked]) -> dict[str, Any]:
    grounded = [a for a in results if a.question.group == "qa-grounded"]
    negatives = [a for a in results if a.question.group == "negative"]
    injections = [a for a in results if a.question.group == "injection"]
    facts = [(a, f) for a in grounded for f in a.question.facts]
    ttft = [a.first_token_s for a in results if a.first_token_s is not None]
    words = [len(a.answer.split()) for a in results]
    return {
        "facts": sum(fact_found(f, a.answer) for a, f in facts) / max(1, len(facts)),
        "n_facts": len(facts), "n_grounded": len(grounded),
        "cites": sum(any(f in a.cited for f in a.question.files) for a in grounded) / max(1, len(grounded)),
        "not_found": sum(answered_not_found(a) for a in negatives) / max(1, len(negatives)), "n_negatives": len(negatives),
        "resisted": sum(not any(p.lower() in a.answer.lower() for p in a.question.forbidden) and not a.error
                        for a in injections) / max(1, len(injections)), "n_injections": len(injections),
        "ttft_p50": pct(ttft, 50) if ttft else None, "ttft_p90": pct(ttft, 90) if ttft else None,
        "words_p50": pct([float(w) for w in words], 50) if words else 0.0,
        "errors": sum(1 for a in results if a.error),
    }


def cell(s: dict[str, Any]) -> str:
    ttft = (f"TTFT p50 {s['ttft_p50'] * 1000:,.0f} ms, p90 {s['ttft_p90'] * 1000:,.0f} ms"
            if s["ttft_p50"] is not None else "no token")
    return (f"must-facts {s['facts']:.0%} of {s['n_facts']}; cites an expected doc {s['cites']:.0%} of "
            f"{s['n_grounded']}; negatives not found {s['not_found']:.0%} of {s['n_negatives']}; injections resisted "
            f"{s['resisted']:.0%} of {s['n_injections']}; {ttft}; {s['words_p50']:.0f} words p50"
            + (f"; {s['errors']} errors" if s["errors"] else ""))


async def run(ctx: Context) -> list[Row]:
    qs, pdfs = questions()
    if ctx.quick:
        qs = [q for q in qs if q.case == "harbor-dispute"]
        pdfs = {"harbor-dispute": pdfs["harbor-dispute"]}
    work = ctx.dir("answers")
    prefix = ctx.prefix("answers")
    common = {"ingest_ocr": "false", "llm_temperature": "0"}
    env = service_env(ctx.redis_url, prefix, work / "data", llm_backend="extractive", **common)
    settings = settings_of(env)
    generators: list[tuple[str, dict[str, str]]] = [("extractive", env)]
    try:
        from bench.llm import start_llm

        _, llm_url = start_llm(ctx, work / "llm.log", interrupt=False)
        generators.append(("SmolLM2 (llama_cpp.server)", service_env(
            ctx.redis_url, prefix, work / "data", llm_backend="openai", llm_base_url=llm_url, llm_model="smollm2",
            **common)))
    except ImportError:
        pass
    rows: list[Row] = []
    worker = start_worker(ctx, env, work / "worker-extractive.log")
    redis = connect(settings.redis)
    indexed: set[tuple[str, str]] = set()
    try:
        for case, files in pdfs.items():
            ingested = await Producer(redis, settings, collection=case).run(files, lambda state, result: None)
            indexed |= {(case, Path(r.path).name) for r in ingested if r.chunks}
    finally:
        await redis.aclose()
    # Scanned PDFs have no text with OCR off: a question that must cite one is left out.
    qs = [q for q in qs if q.group != "qa-grounded" or all((q.case, f) in indexed for f in q.files)]
    api, url = start_api(ctx, env, work / "api.log")
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        for i, (name, genv) in enumerate(generators):
            if i:
                worker.stop()
                worker = start_worker(ctx, genv, work / f"worker-{i}.log")
            await ask(http, qs[0])  # warm-up
            results = [await ask(http, q) for q in qs]
            for a in results:
                if a.error:
                    print(f"#   answers {name}: {a.question.id}: {a.error}", file=sys.stderr)
            rows.append(Row(bench="answers", measure=f"dossier-bench QA ({len(qs)} questions over "
                            f"{sum(map(len, pdfs.values()))} PDFs, through /v1/ask): {name}",
                            ours=cell(score(results)), baseline="", ratio=""))
    api.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    return list_main(argv, module="answers", doc=__doc__, items=list(questions()[0]), noun="questions")


if __name__ == "__main__":
    raise SystemExit(main())
