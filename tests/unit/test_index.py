"""The FAISS wrapper: ids, removal (tombstones for hnsw), serialisation, ivf training, recall."""

from __future__ import annotations

import numpy as np
import pytest

from service.runtime.collections import IndexDefaults
from service.runtime.index import INDEX_KINDS, IndexKind, IndexSpec, VectorIndex, ivf_lists
from service.runtime.stats import l2_normalize
from service.runtime.types import FloatArray

DEFAULTS = IndexDefaults()  # the service's defaults (the settings use the same numbers)
SPECS = {kind: IndexSpec(kind, DEFAULTS.params(kind)) for kind in INDEX_KINDS}


def clustered(n: int, dims: int, seed: int = 0, clusters: int = 50) -> FloatArray:
    """Unit vectors around random centres, as embeddings of a topical corpus are."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dims))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dims))
    return l2_normalize(x.astype(np.float32))


def build(kind: IndexKind, x: FloatArray, ids: np.ndarray | None = None) -> VectorIndex:
    index = VectorIndex.create(SPECS[kind], x.shape[1], x if kind == "ivf" else None, len(x))
    index.add(np.arange(100, 100 + len(x)) if ids is None else ids, x)
    return index


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_ids_round_trip_and_removal(kind: IndexKind) -> None:
    x = clustered(400, 16)
    index = build(kind, x)
    scores, ids = index.search(x[:3], 1)
    assert ids[:, 0].tolist() == [100, 101, 102]
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)
    removed = index.remove(np.array([100, 101]))
    if kind == "hnsw":  # FAISS cannot remove from a graph: tombstones, filtered by the caller
        assert removed == 0 and index.ntotal == 400 and not index.removes
    else:
        assert removed == 2 and index.ntotal == 398 and index.removes
        assert 100 not in index.search(x[:1], 5)[1][0]
    restored = VectorIndex.from_bytes(index.spec, 16, index.to_bytes(), index.trained_on)
    assert restored.ntotal == index.ntotal
    (s1, i1), (s2, i2) = index.search(x[:20], 5), restored.search(x[:20], 5)
    assert np.array_equal(s1, s2) and np.array_equal(i1, i2)


def test_ivf_is_exact_until_trained() -> None:
    x = clustered(100, 8)
    untrained = VectorIndex.create(SPECS["ivf"], 8)
    untrained.add(np.arange(100), x)
    assert untrained.exact and untrained.trained_on == 0 and untrained.describe()["lists"] == 0
    trained = build("ivf", x)
    assert not trained.exact and trained.trained_on == 100
    assert trained.describe()["lists"] == ivf_lists(SPECS["ivf"], 100) == 2  # 100 // 39


def test_ivf_lists_follow_the_collection_size() -> None:
    auto = SPECS["ivf"]
    assert ivf_lists(auto, 5183) == 72  # about sqrt(n)
    assert ivf_lists(IndexSpec("ivf", {"nlist": 500, "nprobe": 8}), 5183) == 132  # 39 per list
    assert ivf_lists(auto, 10) == 1


def test_specs_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown index kind"):
        IndexSpec("lsh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="takes parameters"):
        IndexSpec("hnsw", {"m": 8})
    with pytest.raises(ValueError, match=r"must be an integer in 1\.\.1048576"):
        IndexSpec("ivf", {"nlist": 0, "nprobe": 0})


def test_wrong_shapes_are_refused() -> None:
    index = VectorIndex.create(SPECS["flat"], 8)
    with pytest.raises(ValueError):
        index.add(np.arange(2), np.zeros((2, 9), dtype=np.float32))
    with pytest.raises(ValueError, match="16-dim"):
        VectorIndex.from_bytes(SPECS["flat"], 8, build("flat", clustered(10, 16)).to_bytes(), 0)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_default_parameters_reach_the_recall_target(kind: IndexKind) -> None:
    """recall@10 against exact search >= 0.95 on a topical corpus the size of SciFact, in
    the reference model's 384 dims (a harder one than SciFact: near-random within topics)."""
    x = clustered(5000, 384, seed=1)
    queries = clustered(200, 384, seed=2)
    exact = build("flat", x).search(queries, 10)[1]
    approx = build(kind, x).search(queries, 10)[1]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95, recall


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("hnsw", {"m": 2**20, "ef_construction": 200, "ef_search": 512}),
        ("hnsw", {"m": 1, "ef_construction": 200, "ef_search": 512}),
        ("hnsw", {"m": 32, "ef_construction": 200, "ef_search": 1099511627776}),
        ("hnsw", {"m": 32, "ef_construction": True, "ef_search": 512}),
        ("ivf", {"nlist": 2**40, "nprobe": 48}),
        ("ivf", {"nlist": 0, "nprobe": 0}),
    ],
)
def test_index_spec_refuses_parameters_out_of_range(
    kind: IndexKind, params: dict[str, int]
) -> None:
    with pytest.raises(ValueError, match="must be an integer in"):
        IndexSpec(kind, params)
