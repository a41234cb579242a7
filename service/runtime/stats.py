"""Small statistics used by evaluation and metrics: rank correlation, anisotropy, retrieval.

Implemented with numpy so the runtime needs no scipy.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from service.runtime.types import Float64Array, FloatArray


def rankdata(values: Sequence[float] | np.ndarray) -> Float64Array:
    """Ranks starting at 1, ties given their average rank (as scipy's 'average')."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Boundaries of runs of equal values.
    change = np.concatenate(([True], sorted_x[1:] != sorted_x[:-1], [True]))
    starts = np.flatnonzero(change)
    ranks_sorted = np.empty(len(x), dtype=np.float64)
    for lo, hi in itertools.pairwise(starts):
        ranks_sorted[lo:hi] = (lo + hi + 1) / 2.0
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = ranks_sorted
    return ranks


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation; 0.0 when either side is constant."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("pearson needs two 1-d sequences of equal length")
    a = a - a.mean()
    b = b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return 0.0 if denom == 0.0 else float((a * b).sum() / denom)


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (Pearson of average ranks)."""
    return pearson(rankdata(x), rankdata(y))


def l2_normalize(x: FloatArray) -> FloatArray:
    """Rows scaled to unit length; zero rows stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: FloatArray = (x / norms).astype(np.float32, copy=False)
    return out


def anisotropy(x: FloatArray, pairs: int = 10_000, seed: int = 0) -> dict[str, float]:
    """How anisotropic a set of vectors is.

    `mean_cosine`: mean cosine of random pairs of distinct rows (≈0 for isotropic vectors).
    `top10_variance_share`: share of total variance in the top 10 % of covariance eigenvalues
    (≈0.1 for isotropic vectors, near 1 when a few directions dominate).
    """
    n, d = x.shape
    if n < 2:
        raise ValueError("anisotropy needs at least two vectors")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=pairs)
    j = rng.integers(0, n - 1, size=pairs)
    j = np.where(j >= i, j + 1, j)  # distinct rows
    unit = l2_normalize(np.asarray(x, dtype=np.float32))
    mean_cos = float(np.einsum("ij,ij->i", unit[i], unit[j]).mean())
    xc = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
    eig = np.clip(np.linalg.eigvalsh(xc.T @ xc / max(n - 1, 1)), 0.0, None)[::-1]
    top = max(1, int(np.ceil(0.1 * d)))
    total = float(eig.sum())
    share = float(eig[:top].sum() / total) if total > 0 else 0.0
    return {"mean_cosine": mean_cos, "top10_variance_share": share}


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k with linear gains (trec_eval's, as BEIR reports it); 0.0 with nothing relevant."""
    dcg = sum(relevance.get(doc, 0) / np.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    ideal = sorted((g for g in relevance.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / np.log2(rank + 2) for rank, g in enumerate(ideal))
    return float(dcg / idcg) if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int = 100) -> float:
    """Share of the relevant documents found in the first k; 0.0 with nothing relevant."""
    relevant = {doc for doc, g in relevance.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def mrr_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int = 10) -> float:
    """Reciprocal rank of the first relevant document within the first k; 0.0 if none."""
    for rank, doc in enumerate(ranked[:k], 1):
        if relevance.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0
