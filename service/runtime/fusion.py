"""Hybrid search: fusing the dense (vector) and lexical (BM25) ranked lists into one.

- `rrf`, reciprocal-rank fusion (Cormack et al. 2009): score = sum over lists of
  weight / (k + rank). Needs no score calibration, so it is robust across collections.
- `weighted`, a convex combination of normalised scores (Bruch et al. 2023):
  score = alpha * dense + (1 - alpha) * lexical (a document missing from a list gets 0
  there). Tuned, it can beat RRF. Two normalisations:
  - `minmax`: each list scaled to [0, 1] over its own candidates. It stretches whatever
    spread a list has, so a weak encoder's near-ties become a full 0..1 range.
  - `cosine`: the dense scores are cosines, already on an absolute scale, and are kept;
    the BM25 scores are divided by the query's best one. A flat dense list then adds
    little, which keeps hybrid at least as good as lexical with a weak encoder (refbert on
    SciFact, docs/collections.md).

Each fused hit remembers which lists it came from, its rank (1-based) and raw score in each,
for `"explain": true`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from service.runtime.store.base import Document, Hit

FusionMethod = Literal["rrf", "weighted"]
Normalization = Literal["minmax", "cosine"]
NORMALIZATIONS: tuple[Normalization, ...] = ("minmax", "cosine")
LISTS = ("dense", "lexical")


@dataclass(frozen=True)
class FusionParams:
    """How the two lists are combined (request fields; defaults are settings)."""

    method: FusionMethod = "weighted"
    rrf_k: int = 60
    alpha: float = 0.4
    """Weight of the dense list: in `weighted` the score mix, in `rrf` the rank weight
    (0.5 weighs both lists equally)."""
    candidates: int = 100
    """How deep each list is read before fusing."""
    normalization: Normalization = "minmax"
    """How `weighted` puts the two lists' scores on one scale."""


@dataclass
class FusedHit:
    """A document, its fused score, and where it came from."""

    document: Document
    score: float
    sources: dict[str, dict[str, float]] = field(default_factory=dict)
    """list name -> {"rank": 1-based rank, "score": that list's own score}."""


def _minmax(hits: Sequence[Hit]) -> dict[str, float]:
    if not hits:
        return {}
    scores = [h.score for h in hits]
    low, high = min(scores), max(scores)
    span = high - low
    return {h.document.id: (h.score - low) / span if span > 0 else 1.0 for h in hits}


def _scaled_by_best(hits: Sequence[Hit]) -> dict[str, float]:
    best = max((h.score for h in hits), default=0.0)
    return {h.document.id: h.score / best if best > 0 else 0.0 for h in hits}


def _normalised(name: str, hits: Sequence[Hit], how: Normalization) -> dict[str, float]:
    if how == "minmax":
        return _minmax(hits)
    if name == "dense":
        return {h.document.id: h.score for h in hits}
    return _scaled_by_best(hits)


def fuse(lists: Mapping[str, Sequence[Hit]], params: FusionParams, k: int) -> list[FusedHit]:
    """The k best documents of the fused lists, best first (ties: the dense order)."""
    weights = {"dense": params.alpha, "lexical": 1.0 - params.alpha}
    fused: dict[str, FusedHit] = {}
    for name in LISTS:
        hits = lists.get(name, ())
        normalised = (
            _normalised(name, hits, params.normalization) if params.method == "weighted" else {}
        )
        for rank, hit in enumerate(hits, 1):
            doc_id = hit.document.id
            entry = fused.setdefault(doc_id, FusedHit(hit.document, 0.0))
            entry.sources[name] = {"rank": rank, "score": hit.score}
            if params.method == "rrf":
                entry.score += 2 * weights[name] / (params.rrf_k + rank)
            else:
                entry.score += weights[name] * normalised[doc_id]
    order = sorted(fused.values(), key=lambda h: -h.score)  # stable: dense first on ties
    return order[:k]


def explain(hit: FusedHit) -> dict[str, Any]:
    """The `sources` object of a search result."""
    return {
        name: {"rank": int(src["rank"]), "score": float(src["score"])}
        for name, src in hit.sources.items()
    }
