"""Hard negatives and rerank candidates from the service's own hybrid retriever, offline.

A reranker learns what the retriever in front of it gets wrong, so its negatives come from
that retriever: BM25 with the service's analyser and FTS5's formula
(`service.runtime.lexical`), the base bi-encoder's cosine (its query/passage prompts), and the
service's default fusion (`service.runtime.fusion`: weighted, alpha 0.4, min-max, 100 deep).
The corpus is held in memory; a BEIR corpus of a few thousand documents ranks in seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from service.runtime.fusion import FusionParams, fuse
from service.runtime.lexical import BM25_B, BM25_K1, bm25_idf, term_counts, terms
from service.runtime.store.base import Document, Hit

DenseEncoder = Callable[[list[str], str], np.ndarray]
"""Texts and their use ('query' or 'document') -> L2-normalised vectors (one row per text)."""


class Bm25Index:
    """An in-memory BM25 index with the service's analyser and FTS5's bm25() constants."""

    def __init__(self, texts: Sequence[str], analyzer: str = "english") -> None:
        self.analyzer = analyzer
        self.postings: dict[str, list[tuple[int, int]]] = {}
        lengths = []
        for i, text in enumerate(texts):
            counts, length = term_counts(analyzer, text)
            lengths.append(length)
            for term, count in counts.items():
                self.postings.setdefault(term, []).append((i, count))
        self.lengths = np.asarray(lengths, dtype=np.float64)
        self.avg = float(self.lengths.mean()) if len(lengths) else 0.0

    def scores(self, query: str) -> np.ndarray:
        """BM25 of every document for the query's distinct terms (0 where none matches)."""
        out = np.zeros(len(self.lengths))
        n = len(self.lengths)
        for term in dict.fromkeys(terms(self.analyzer, query)):
            posting = self.postings.get(term)
            if not posting:
                continue
            idf = bm25_idf(n, len(posting))
            docs = np.fromiter((d for d, _ in posting), dtype=np.int64, count=len(posting))
            tf = np.fromiter((c for _, c in posting), dtype=np.float64, count=len(posting))
            norm = BM25_K1 * (1 - BM25_B + BM25_B * self.lengths[docs] / max(self.avg, 1e-9))
            out[docs] += idf * tf * (BM25_K1 + 1) / (tf + norm)
        return out


@dataclass
class HybridRetriever:
    """The corpus ranked as the service's hybrid search ranks a collection."""

    ids: list[str]
    texts: list[str]
    bm25: Bm25Index
    doc_vectors: np.ndarray | None
    encode: DenseEncoder | None
    fusion: FusionParams

    @classmethod
    def build(
        cls,
        corpus: dict[str, str],
        encode: DenseEncoder | None,
        analyzer: str = "english",
        fusion: FusionParams | None = None,
    ) -> HybridRetriever:
        """Index the corpus: BM25 always, dense vectors when an encoder is given."""
        ids = list(corpus)
        texts = [corpus[i] for i in ids]
        vectors = encode(texts, "document") if encode is not None else None
        params = fusion or FusionParams()
        return cls(ids, texts, Bm25Index(texts, analyzer), vectors, encode, params)

    def rank(self, queries: list[str], depth: int) -> list[list[str]]:
        """The `depth` best document ids of each query, best first."""
        wide = max(depth, self.fusion.candidates)
        dense = self.encode(queries, "query") if self.encode is not None else None
        out = []
        for qi, query in enumerate(queries):
            lists = {"lexical": self._hits(self.bm25.scores(query), wide, positive_only=True)}
            if dense is not None and self.doc_vectors is not None:
                lists["dense"] = self._hits(self.doc_vectors @ dense[qi], wide)
            fused = fuse(lists, self.fusion, depth)
            out.append([h.document.id for h in fused])
        return out

    def _hits(self, scores: np.ndarray, k: int, positive_only: bool = False) -> list[Hit]:
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [
            Hit(Document(self.ids[i], self.texts[i]), float(scores[i]))
            for i in top
            if not positive_only or scores[i] > 0
        ]


def mine_negatives(
    ranked: list[str], relevant: set[str], count: int, depth: int, rng: np.random.Generator
) -> list[str]:
    """`count` non-relevant ids drawn (seeded, without replacement) from the `depth` best of
    a ranking; fewer when the ranking holds fewer."""
    pool = [d for d in ranked[:depth] if d not in relevant]
    if len(pool) <= count:
        return pool
    picked = np.sort(rng.choice(len(pool), size=count, replace=False))
    return [pool[int(i)] for i in picked]
