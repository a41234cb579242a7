"""Fusion of the dense and lexical lists, and the tuning grid over it."""

from __future__ import annotations

import pytest

from service.cli.tuning import Setting, default_grid, score, tune
from service.runtime.fusion import FusionParams, fuse
from service.runtime.store.base import Document, Hit


def _hits(*pairs: tuple[str, float]) -> list[Hit]:
    return [Hit(Document(doc, ""), s) for doc, s in pairs]


LISTS = {
    "dense": _hits(("a", 0.62), ("b", 0.60), ("c", 0.20)),
    "lexical": _hits(("c", 30.0), ("b", 3.0), ("d", 1.5)),
}


def test_minmax_stretches_each_list_over_its_own_candidates() -> None:
    fused = fuse(LISTS, FusionParams("weighted", normalization="minmax", alpha=0.5), 4)
    got = {h.document.id: h.score for h in fused}
    # dense: a 1, b 0.952, c 0; lexical: c 1, b 0.0526, d 0
    assert got["a"] == pytest.approx(0.5)
    assert got["c"] == pytest.approx(0.5)
    assert got["b"] == pytest.approx(0.5 * (0.40 / 0.42) + 0.5 * (1.5 / 28.5))
    assert got["d"] == pytest.approx(0.0)


def test_cosine_keeps_the_cosines_and_scales_bm25_by_the_best() -> None:
    """A near-tie in cosine stays a near-tie, instead of being stretched to 0..1."""
    fused = fuse(LISTS, FusionParams("weighted", normalization="cosine", alpha=0.5), 4)
    got = {h.document.id: h.score for h in fused}
    assert got == pytest.approx(
        {"a": 0.31, "b": 0.30 + 0.05, "c": 0.10 + 0.5, "d": 0.5 * 1.5 / 30.0}
    )
    assert [h.document.id for h in fused] == ["c", "b", "a", "d"]
    assert fused[0].sources == {
        "dense": {"rank": 3, "score": 0.20},
        "lexical": {"rank": 1, "score": 30.0},
    }


def test_cosine_with_no_positive_bm25_score_adds_nothing() -> None:
    lists = {"dense": _hits(("a", 0.5)), "lexical": _hits(("b", 0.0))}
    fused = fuse(lists, FusionParams("weighted", normalization="cosine", alpha=0.5), 2)
    assert {h.document.id: h.score for h in fused} == {"a": 0.25, "b": 0.0}


def test_tuning_picks_the_setting_that_ranks_the_judged_documents_first() -> None:
    # q1's relevant document is lexical's first and dense's third; q2's is dense's first.
    lists = {
        "q1": {"dense": _hits(("x", 0.9), ("y", 0.8), ("r1", 0.7)), "lexical": _hits(("r1", 9.0))},
        "q2": {"dense": _hits(("r2", 0.9), ("z", 0.1)), "lexical": _hits(("z", 5.0))},
    }
    qrels = {"q1": {"r1": 1}, "q2": {"r2": 1}}
    assert score(Setting("dense"), lists, qrels) < 1.0
    assert score(Setting("lexical"), lists, qrels) < 1.0
    ranked = tune(lists, qrels, default_grid(depth=10))
    best_score, best = ranked[0]
    assert best_score == pytest.approx(1.0) and best.mode == "hybrid"
    assert ranked[-1][0] < best_score
    body = best.as_defaults()
    assert body["mode"] == "hybrid" and set(body["fusion"]) == {
        "method",
        "normalization",
        "rrf_k",
        "alpha",
        "candidates",
    }
