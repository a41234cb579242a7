"""Tuning a collection's search defaults on judged queries (`simsvc tune-search`).

Which mode wins, and how hybrid search should weigh its two lists, depends on the encoder
and the corpus: all-MiniLM-L6-v2 on SciFact gains most from a dense-heavy mix, a raw BERT's
vectors are weak and must only nudge the BM25 order. So the defaults are measured per
collection: each judged query's dense and lexical lists are read once through the API,
every candidate setting is fused here with the service's own `fuse()` (the same code the
server runs), and the best mean nDCG@10 wins. `--apply` stores it as the collection's
default, which `GET /v1/collections/{name}` then reports.

Tune on training queries only; the grid is small (a few dozen settings), so the choice
carries over to held-out queries rather than fitting them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.cli.client import ServiceClient, search
from service.runtime.fusion import FusionParams, fuse
from service.runtime.stats import ndcg_at_k
from service.runtime.store.base import Document, Hit

Lists = dict[str, dict[str, list[Hit]]]
"""query id -> {"dense": hits, "lexical": hits}, best first."""


@dataclass(frozen=True)
class Setting:
    """One candidate default: a mode, and for hybrid its fusion."""

    mode: str
    fusion: FusionParams | None = None

    def as_defaults(self) -> dict[str, Any]:
        """The body of `PUT /v1/collections/{name}` {"search": ...} for this setting."""
        out: dict[str, Any] = {"mode": self.mode}
        if self.fusion is not None:
            f = self.fusion
            out["fusion"] = {
                "method": f.method,
                "normalization": f.normalization,
                "rrf_k": f.rrf_k,
                "alpha": f.alpha,
                "candidates": f.candidates,
            }
        return out

    def label(self) -> str:
        f = self.fusion
        if f is None:
            return self.mode
        if f.method == "rrf":
            return f"hybrid rrf k={f.rrf_k} alpha={f.alpha} candidates={f.candidates}"
        return f"hybrid weighted {f.normalization} alpha={f.alpha} candidates={f.candidates}"


def default_grid(depth: int = 100) -> list[Setting]:
    """Dense, lexical, and hybrid over RRF's k and weight and both weighted normalisations."""
    alphas = [round(0.1 * i, 1) for i in range(1, 10)]
    cands = sorted({c for c in (50, depth) if c <= depth})
    grid = [Setting("dense"), Setting("lexical")]
    grid += [
        Setting("hybrid", FusionParams("rrf", rrf_k=k, alpha=a, candidates=c))
        for k in (10, 30, 60, 100)
        for a in (0.3, 0.4, 0.5, 0.6, 0.7)
        for c in cands
    ]
    grid += [
        Setting("hybrid", FusionParams("weighted", normalization=n, alpha=a, candidates=c))
        for n in ("minmax", "cosine")
        for a in alphas
        for c in cands
    ]
    return grid


def read_lists(
    client: ServiceClient,
    collection: str,
    queries: Mapping[str, str],
    qids: Iterable[str],
    depth: int = 100,
) -> Lists:
    """Each query's dense and lexical lists, `depth` deep, read through the API."""
    out: Lists = {}
    for qid in qids:
        out[qid] = {}
        for mode in ("dense", "lexical"):
            hits = search(client, collection, queries[qid], depth, mode=mode)
            out[qid][mode] = [Hit(Document(h["id"], ""), float(h["score"])) for h in hits]
    return out


def score(setting: Setting, lists: Lists, qrels: Mapping[str, Mapping[str, int]]) -> float:
    """Mean nDCG@10 of one setting over the queries' lists."""
    total = 0.0
    for qid, both in lists.items():
        if setting.fusion is None:
            ranked = [h.document.id for h in both[setting.mode][:10]]
        else:
            cut = {m: hits[: setting.fusion.candidates] for m, hits in both.items()}
            ranked = [h.document.id for h in fuse(cut, setting.fusion, 10)]
        total += ndcg_at_k(ranked, qrels[qid])
    return total / len(lists) if lists else 0.0


def tune(
    lists: Lists, qrels: Mapping[str, Mapping[str, int]], grid: Sequence[Setting]
) -> list[tuple[float, Setting]]:
    """Every setting's nDCG@10, best first (ties keep the grid's order: simpler first)."""
    scored = [(score(s, lists, qrels), s) for s in grid]
    return sorted(scored, key=lambda pair: -pair[0])
