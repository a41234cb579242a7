"""The compressed index kinds in the local store: recall@10 against exact search, training
once the collection is big enough, the refine step's exact re-score, reopening after a
restart and rebuilding into another kind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service.runtime.collections import IndexDefaults
from service.runtime.index import IndexKind, IndexSpec
from service.runtime.store.base import CollectionSpec, Document, ModelInfo
from service.runtime.store.local import LocalStore
from service.runtime.store.local_collection import LocalOptions
from service.runtime.whitening import Whitening
from tests.unit.test_index import clustered

DIMS = 384
N = 3000
FLOORS: dict[str, float] = {"hnsw_sq8": 0.9, "ivf_sq8": 0.9, "ivf_pq": 0.93}
"""recall@10 against exact search with the default parameters on 3,000 clustered 384-d
vectors (measured: hnsw_sq8 0.979, ivf_sq8 0.976, ivf_pq with refine 8 0.967)."""


def spec(kind: IndexKind) -> IndexSpec:
    return IndexSpec(kind, IndexDefaults().params(kind))


async def fill(root: Path, kind: IndexKind, x: np.ndarray) -> LocalStore:
    store = LocalStore(root, LocalOptions(ivf_min_documents=500))
    await store.open()
    model = ModelInfo("m", "mean", DIMS)
    created = CollectionSpec(model, spec(kind), DIMS, Whitening.identity(DIMS))
    assert await store.create("c", created)
    for start in range(0, len(x), 1000):
        writer = await store.begin("c")
        part = x[start : start + 1000]
        docs = [Document(f"d{start + i}", f"text {start + i}", {}) for i in range(len(part))]
        await writer.upsert(docs, part)
        await writer.commit()
        await store.maintain(store.collection("c"))
    return store


async def recall(store: LocalStore, x: np.ndarray, queries: np.ndarray) -> float:
    exact = np.argsort(-(queries @ x.T), axis=1)[:, :10]
    found = 0
    for q, truth in zip(queries, exact, strict=True):
        hits = await store.search("c", q[None, :], 10, None)
        found += len({h.document.id for h in hits} & {f"d{i}" for i in truth})
    return found / (10 * len(queries))


@pytest.mark.parametrize("kind", ["hnsw_sq8", "ivf_sq8", "ivf_pq"])
def test_compressed_kinds_train_keep_recall_and_reopen(tmp_path: Path, kind: IndexKind) -> None:
    x = clustered(N, DIMS, seed=1)
    queries = clustered(100, DIMS, seed=2)

    async def run() -> None:
        store = await fill(tmp_path, kind, x)
        index = store.collection("c").view.index  # type: ignore[union-attr]
        assert index.trained_on >= 500 and not index.exact  # trained, not a flat scan
        assert index.bytes_per_vector() <= DIMS  # 8-bit codes or fewer bytes
        before = await recall(store, x, queries)
        assert before >= FLOORS[kind], before
        await store.close()  # a clean stop writes the snapshot

        reopened = LocalStore(tmp_path, LocalOptions(ivf_min_documents=500))
        await reopened.open()
        view = reopened.collection("c").view
        assert view is not None and view.index.spec == spec(kind) and view.index.ntotal == N
        assert await recall(reopened, x, queries) == before
        # Rebuild into flat and back: the stored vectors are the truth.
        await reopened.configure("c", index=spec("flat"))
        assert await recall(reopened, x, queries) == 1.0
        await reopened.configure("c", index=spec(kind))
        assert await recall(reopened, x, queries) >= FLOORS[kind]
        await reopened.close()

    asyncio.run(run())


def test_refine_rescores_on_the_exact_vectors(tmp_path: Path) -> None:
    """ivf_pq with refine 1 ranks by approximate codes; refine re-scores on stored vectors,
    so the top hit of a stored vector is itself with its exact score."""
    x = clustered(N, DIMS, seed=3)

    async def run() -> None:
        store = await fill(tmp_path, "ivf_pq", x)
        hits = await store.search("c", x[7:8], 5, None)
        assert hits[0].document.id == "d7" and hits[0].score == pytest.approx(1.0, abs=1e-5)
        coarse_spec = IndexSpec("ivf_pq", {**spec("ivf_pq").params, "refine": 1})
        await store.configure("c", index=coarse_spec)
        coarse = await store.search("c", x[7:8], 5, None)
        assert abs(coarse[0].score - 1.0) > 1e-4  # a PQ code's score is not the exact one
        await store.close()

    asyncio.run(run())
