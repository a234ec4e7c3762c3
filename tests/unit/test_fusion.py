"""Weighted DBSF and RRF over the arms' candidates."""

from __future__ import annotations

import pytest

from workers.store import Hit
from workers.store.fusion import dbsf, fuse


def hits(*pairs: tuple[str, float]) -> list[Hit]:
    return [Hit(i, s, {"id": i}) for i, s in pairs]


def test_dbsf_maps_mean_plus_minus_three_deviations_onto_0_1() -> None:
    scores = dbsf(hits(("a", 3.0), ("b", 2.0), ("c", 1.0)))
    assert scores[1] == pytest.approx(0.5)  # the mean
    assert scores[0] - scores[1] == pytest.approx(scores[1] - scores[2])
    assert dbsf(hits(("a", 5.0))) == [1.0] and dbsf(hits(("a", 2.0), ("b", 2.0))) == [1.0, 1.0]


def test_weights_decide_between_arms_that_disagree() -> None:
    dense = hits(("p1", 0.9), ("p2", 0.5), ("p3", 0.4))
    sparse = hits(("p2", 20.0), ("p1", 5.0), ("p4", 4.0))
    even = fuse([("dense", 1.0, dense), ("sparse", 1.0, sparse)], method="dbsf", rrf_k=60, limit=10)
    assert {h.id for h in even} == {"p1", "p2", "p3", "p4"}
    assert set(even[0].arms) == {"dense", "sparse"}  # each arm's normalized score is kept
    assert fuse([("dense", 3.0, dense), ("sparse", 1.0, sparse)], method="dbsf", rrf_k=60, limit=1)[0].id == "p1"
    assert fuse([("dense", 1.0, dense), ("sparse", 3.0, sparse)], method="dbsf", rrf_k=60, limit=1)[0].id == "p2"
    only = fuse([("dense", 1.0, dense), ("sparse", 0.0, sparse)], method="dbsf", rrf_k=60, limit=10)
    assert [h.id for h in only] == ["p1", "p2", "p3"]


def test_rrf_sums_weighted_reciprocal_ranks() -> None:
    dense = hits(("p1", 0.9), ("p2", 0.5))
    sparse = hits(("p2", 20.0), ("p3", 5.0))
    fused = fuse([("dense", 1.0, dense), ("sparse", 1.0, sparse)], method="rrf", rrf_k=60, limit=10)
    assert fused[0].id == "p2" and fused[0].score == pytest.approx(1 / 62 + 1 / 61, abs=1e-6)
    assert [h.id for h in fused[1:]] == ["p1", "p3"]  # a tie keeps the arms' order
    assert fuse([("dense", 1.0, dense), ("sparse", 1.0, [])], method="rrf", rrf_k=60, limit=1) == dense[:1]
