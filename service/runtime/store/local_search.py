"""Reads of a local collection: nearest neighbours through its index view (or an exact scan
of the store when it has none), and BM25 through SQLite's FTS5. Any thread may call these."""

from __future__ import annotations

import numpy as np

from service.runtime.lexical import fts_query
from service.runtime.store.base import Filter, Hit, WhiteningState, embed, top_k
from service.runtime.store.docstore import DocStore
from service.runtime.store.local_index import IndexView
from service.runtime.types import FloatArray


def search_view(
    store: DocStore,
    view: IndexView,
    query: FloatArray,
    k: int,
    where: Filter | None,
    filter_oversample: int,
    max_candidates: int,
) -> list[Hit]:
    """The k nearest live documents matching the filter, `query` already embedded.

    Over-fetches by the filter's oversampling, by hnsw's tombstones and by the index's refine
    factor (whose candidates are re-scored on the exact vectors stored on disk), widens while
    too few candidates survive, and falls back to an exact scan of the matching documents when
    the approximate index runs dry or the candidates grow too many.
    """
    total = view.index.ntotal
    if total == 0:
        return []
    dead = max(0, total - store.count)
    refine = view.index.refine
    fetch = min(total, k * refine * (filter_oversample if where else 1) + dead)
    while True:
        with view.lock:
            scores, ids = view.index.search(query, fetch)
        found = ids[0] >= 0
        seqs, values = ids[0][found], scores[0][found]
        with store.read() as r:
            if refine > 1 and len(seqs):
                seqs, raw = r.vectors_of(seqs.tolist())
                values = view.embed(raw) @ query[0]
                order = np.argsort(-values, kind="stable")
                seqs, values = seqs[order], values[order]
            docs = r.fetch(seqs.tolist(), where)
        hits = [
            Hit(docs[s], float(v))
            for s, v in zip(seqs.tolist(), values.tolist(), strict=True)
            if s in docs
        ]
        if len(hits) >= k or (fetch >= total and view.index.exact):
            return hits[:k]
        if fetch >= total or fetch >= max_candidates:
            return exact_scan(store, view.whitening, view.dims, query, k, where)
        fetch = min(total, fetch * 4)


def exact_scan(
    store: DocStore,
    white: WhiteningState,
    dims: int,
    query: FloatArray,
    k: int,
    where: Filter | None,
) -> list[Hit]:
    """Score every matching stored vector: memory bounded by one chunk plus k."""
    best_scores = np.empty(0, dtype=np.float32)
    best_seqs = np.empty(0, dtype=np.int64)
    with store.read() as r:
        for seqs, raw in r.vectors(where=where):
            scores = np.concatenate([best_scores, embed(white, dims, raw) @ query[0]])
            all_seqs = np.concatenate([best_seqs, seqs])
            keep = top_k(scores, k)
            best_scores, best_seqs = scores[keep], all_seqs[keep]
        docs = r.fetch(best_seqs.tolist())
    return [
        Hit(docs[s], float(v))
        for s, v in zip(best_seqs.tolist(), best_scores.tolist(), strict=True)
        if s in docs
    ]


def lexical_search(store: DocStore, query: str, k: int, where: Filter | None) -> list[Hit]:
    """The k best BM25 matches of the query's analysed terms (FTS5's bm25())."""
    match = fts_query(store.analyzer, query)
    if match is None:
        return []
    with store.read() as r:
        rows = r.lexical(match, k, where)
    return [Hit(doc, score) for _, doc, score in rows]
