"""Searching a collection: dense, lexical or hybrid, optionally reranked (by the bundle's
relevance reranker when it has one, else its cross-encoder).

- `dense`: the query's vector against the collection's whitened vectors (the store's ANN
  index);
- `lexical`: BM25 over the collection's analysed terms (the store's lexical index);
- `hybrid`: both lists, each `candidates` deep, searched concurrently, fused
  (`service.runtime.fusion`).

`rerank` rescores the top N results with the bundle's cross-encoder, which reads query and
document together. Filters apply to every list, so every mode returns k results whenever k
documents match.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

from service.errors import NoCrossEncoderError, ValidationError
from service.runtime.engine import Engine
from service.runtime.fusion import NORMALIZATIONS, FusedHit, FusionParams, fuse
from service.runtime.store.base import Filter, Hit, StoredCollection

SearchMode = Literal["dense", "lexical", "hybrid"]
SEARCH_MODES: tuple[SearchMode, ...] = ("dense", "lexical", "hybrid")


class SearchObserver(Protocol):
    """Receives search figures (the metrics module implements it)."""

    def search_request(self, mode: str, seconds: float) -> None: ...


@dataclass(frozen=True)
class SearchDefaults:
    """A collection's search defaults: the service's settings, overridden per collection."""

    mode: SearchMode = "hybrid"
    fusion: FusionParams = field(default_factory=FusionParams)

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "fusion": asdict(self.fusion)}

    def overridden(self, stored: Mapping[str, Any]) -> SearchDefaults:
        """These defaults with a collection's stored overrides applied."""
        fusion = replace(self.fusion, **dict(stored.get("fusion") or {}))
        return SearchDefaults(stored.get("mode", self.mode), fusion)


@dataclass(frozen=True)
class SearchLimits:
    max_k: int = 1000
    max_candidates: int = 1000
    max_rerank: int = 100


@dataclass(frozen=True)
class SearchRequest:
    """One search: what the API passes down (None: the collection's default)."""

    query: str
    k: int = 10
    where: Filter | None = None
    mode: SearchMode | None = None
    fusion: Mapping[str, Any] | None = None
    rerank: int = 0
    """Candidates to rescore with the cross-encoder (0: none)."""


@dataclass
class SearchResult:
    hits: list[FusedHit]
    mode: SearchMode
    reranked: int = 0


def _as_fused(name: str, hits: list[Hit]) -> list[FusedHit]:
    return [
        FusedHit(h.document, h.score, {name: {"rank": rank, "score": h.score}})
        for rank, h in enumerate(hits, 1)
    ]


async def run_search(
    collection: StoredCollection,
    engine: Engine,
    request: SearchRequest,
    defaults: SearchDefaults,
    limits: SearchLimits,
    observer: SearchObserver | None = None,
) -> SearchResult:
    """Search one collection, looked up already (its model checked against the engine's)."""
    started = time.perf_counter()
    mode = request.mode or defaults.mode
    try:
        fusion = replace(defaults.fusion, **dict(request.fusion or {}))
    except TypeError as exc:
        raise ValidationError(f"unknown fusion parameter: {exc}") from exc
    check_fusion(fusion, limits)
    if not 0 <= request.rerank <= limits.max_rerank:
        raise ValidationError(f"rerank candidates must be in 0..{limits.max_rerank}")
    depth = max(request.k, request.rerank)
    if request.rerank and engine.ranker is None:
        raise NoCrossEncoderError(
            "reranking needs a bundle with a reranker or a cross-encoder: build it with "
            "`simsvc build ... --reranker CHECKPOINT` (or --cross-model), or search without "
            "rerank"
        )
    hits: list[FusedHit]
    if mode == "lexical":
        hits = _as_fused("lexical", await collection.lexical(request.query, depth, request.where))
    else:
        if mode == "dense":
            emb = await engine.embed([request.query], whiten=False, normalize=False, role="query")
            dense = await collection.search(emb.vectors, depth, request.where)
            hits = _as_fused("dense", dense)
        else:
            dense, lexical = await _both_legs(
                collection, engine, request, max(depth, fusion.candidates)
            )
            hits = fuse({"dense": dense, "lexical": lexical}, fusion, depth)
    reranked = 0
    if request.rerank and hits:
        hits, reranked = await _rerank(engine, request.query, hits, request.rerank)
    if observer is not None:
        observer.search_request(mode, time.perf_counter() - started)
    return SearchResult(hits[: request.k], mode, reranked)


async def _both_legs(
    collection: StoredCollection, engine: Engine, request: SearchRequest, wide: int
) -> tuple[list[Hit], list[Hit]]:
    """Hybrid's two lists, concurrently: the lexical leg starts at once and runs while the
    query is encoded and the dense leg searched (each on a connection or thread of its own);
    the dense leg failing cancels the lexical one."""
    lexical = asyncio.ensure_future(collection.lexical(request.query, wide, request.where))
    try:
        emb = await engine.embed([request.query], whiten=False, normalize=False, role="query")
        dense = await collection.search(emb.vectors, wide, request.where)
    except BaseException:
        lexical.cancel()
        await asyncio.gather(lexical, return_exceptions=True)
        raise
    return dense, await lexical


def check_fusion(fusion: FusionParams, limits: SearchLimits) -> None:
    """Fusion parameters within their documented ranges."""
    if fusion.method not in ("rrf", "weighted"):
        raise ValidationError(f"fusion method must be rrf or weighted, not {fusion.method!r}")
    if fusion.normalization not in NORMALIZATIONS:
        raise ValidationError(
            f"fusion normalization must be minmax or cosine, not {fusion.normalization!r}"
        )
    if not 0.0 <= fusion.alpha <= 1.0:
        raise ValidationError(f"fusion alpha must be in 0..1, got {fusion.alpha}")
    if not 1 <= fusion.rrf_k <= 10_000:
        raise ValidationError(f"fusion rrf_k must be in 1..10000, got {fusion.rrf_k}")
    if not 1 <= fusion.candidates <= limits.max_candidates:
        raise ValidationError(
            f"fusion candidates must be in 1..{limits.max_candidates}, got {fusion.candidates}"
        )


async def _rerank(
    engine: Engine, query: str, hits: list[FusedHit], candidates: int
) -> tuple[list[FusedHit], int]:
    """The top `candidates` rescored by the reranker, else the cross-encoder (best first),
    then the rest."""
    top, rest = hits[:candidates], hits[candidates:]
    scored = await engine.cross_similarity(
        [(query, h.document.text) for h in top], limit=len(top), relevance=True
    )
    for hit, score in zip(top, scored.scores, strict=True):
        hit.sources["rerank"] = {"rank": 0, "score": float(score)}
        hit.score = float(score)
    top.sort(key=lambda h: -h.score)
    for rank, hit in enumerate(top, 1):
        hit.sources["rerank"]["rank"] = rank
    return top + rest, len(top)
