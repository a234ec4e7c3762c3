"""Fusing the arms' candidates into one ranking: weighted DBSF, or weighted RRF.

Both stores fetch every arm of every question of a micro-batch in one batched call and fuse
here. Qdrant's own DBSF (distribution-based score fusion: each arm's scores mapped through
mean +- 3 standard deviations onto [0, 1], then summed) takes no weights, and on the dev sets
the dense arm needs more weight than the two BM25 arms: questions in a user's own words share
few words with the page that answers them (bench/devsets; python -m bench retrieval).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

from workers.store.types import Arm, Fusion, Hit, Rerank, Search


def dbsf(hits: list[Hit]) -> list[float]:
    """Each score mapped through its list's mean +- 3 standard deviations onto [0, 1] (as Qdrant's DBSF)."""
    scores = [h.score for h in hits]
    if len(scores) < 2:
        return [1.0] * len(scores)
    mean, spread = statistics.fmean(scores), 3 * statistics.pstdev(scores)
    if spread == 0:
        return [1.0] * len(scores)
    low = mean - spread
    return [(s - low) / (2 * spread) for s in scores]


def fuse(arms: list[tuple[str, float, list[Hit]]], *, method: str, rrf_k: int, limit: int | None) -> list[Hit]:
    """The candidates of ``(arm, weight, hits best first)``, by their weighted normalized scores summed;
    each hit keeps its arms' normalized scores (``Hit.arms``)."""
    live = [(name, w, hits) for name, w, hits in arms if hits and w > 0]
    if len(live) == 1:
        return live[0][2][:limit]
    total: dict[str, float] = {}
    parts: dict[str, dict[str, float]] = {}
    payloads: dict[str, dict[str, Any]] = {}
    for name, weight, hits in live:
        norm = dbsf(hits) if method == "dbsf" else [1 / (rrf_k + rank) for rank in range(1, len(hits) + 1)]
        for hit, value in zip(hits, norm):
            total[hit.id] = total.get(hit.id, 0.0) + weight * value
            parts.setdefault(hit.id, {})[name] = value
            payloads.setdefault(hit.id, {}).update(hit.payload)  # what each arm fetched of it
    order = sorted(total, key=total.__getitem__, reverse=True)[:limit]  # stable: ties keep arm order
    return [Hit(i, round(total[i], 6), payloads[i], parts[i]) for i in order]


def rank(searches: list[Search], plans: list[list[Arm]], results: Iterable[list[Hit]], *, fusion: Fusion,
         limit: int, rerank: Rerank | None) -> list[list[Hit]]:
    """Each search's top ``limit``: a lone arm's hits as they came (with their payloads); several arms'
    candidates fused, all of them reordered by ``rerank``, then cut (their payloads still to fetch)."""
    lists = iter(results)
    out: list[list[Hit]] = []
    for search, plan in zip(searches, plans):
        hits = [(a.arm, a.weight, next(lists)) for a in plan]
        if len(plan) <= 1:
            out.append(hits[0][2][:limit] if hits else [])
            continue
        fused = fuse(hits, method=fusion.method, rrf_k=fusion.rrf_k, limit=None)
        out.append((rerank(search, fused) if rerank is not None and fused else fused)[:limit])
    return out


def unfetched(plans: list[list[Arm]], ranked: list[list[Hit]]) -> list[str]:
    """The point ids whose payloads the fused searches still need."""
    return [h.id for plan, hits in zip(plans, ranked) if len(plan) > 1 for h in hits]


def fetched(plans: list[list[Arm]], ranked: list[list[Hit]], payloads: dict[str, dict[str, Any]]) -> list[list[Hit]]:
    """The fused searches' hits with their payloads; a point deleted meanwhile is left out."""
    return [[Hit(h.id, h.score, payloads[h.id], h.arms) for h in hits if h.id in payloads] if len(plan) > 1
            else hits for plan, hits in zip(plans, ranked)]
