"""FAISS behind a small typed interface: inner product over unit vectors, int64 ids.

Three kinds, each addressable by id so updates and deletes work for all of them:

- `flat`: exact search (`IDMap2,Flat`); ids are removed for real.
- `hnsw`: a graph (`IDMap2,HNSW`); FAISS cannot remove from it, so removed ids stay in the
  graph as tombstones. The caller filters them out (their documents are gone from the store),
  over-fetches by their number and rebuilds when they pile up.
- `ivf`: inverted lists (`IVF,Flat`); ids are removed for real. It needs training, so a
  collection too small to train one is searched exactly until it has grown enough.

FAISS is untyped; this module is the only one that touches it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np

from service.runtime.types import FloatArray, IntArray

IndexKind = Literal["flat", "hnsw", "ivf"]
INDEX_KINDS: tuple[IndexKind, ...] = ("flat", "hnsw", "ivf")

PARAMS: dict[IndexKind, tuple[str, ...]] = {
    "flat": (),
    "hnsw": ("m", "ef_construction", "ef_search"),
    "ivf": ("nlist", "nprobe"),
}
"""The parameters each kind takes (all positive integers; ivf's nlist 0 means automatic)."""

PARAM_RANGES: dict[str, tuple[int, int]] = {
    "m": (2, 256),
    "ef_construction": (1, 100_000),
    "ef_search": (1, 100_000),
    "nlist": (0, 1 << 20),
    "nprobe": (1, 1 << 20),
}
"""The widest value range of each parameter: beyond these FAISS overflows its C int, or the
graph needs more memory per vector than any deployment has (m), or a search or build takes
hours. The service's settings narrow them further (`hnsw_max_m`, ...)."""

IVF_POINTS_PER_LIST = 39
"""FAISS's k-means wants at least this many training points per centroid."""
IVF_MAX_TRAIN_PER_LIST = 256
"""More training points than this per list buy nothing but time."""


@dataclass(frozen=True)
class IndexSpec:
    """An index kind and its parameters, complete (defaults filled in)."""

    kind: IndexKind
    params: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in PARAMS:
            raise ValueError(f"unknown index kind {self.kind!r}; choose one of {INDEX_KINDS}")
        expected = set(PARAMS[self.kind])
        if set(self.params) != expected:
            raise ValueError(
                f"{self.kind} takes parameters {sorted(expected)}, got {sorted(self.params)}"
            )
        for name, value in self.params.items():
            low, high = PARAM_RANGES[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(
                    f"{self.kind} parameter {name} must be an integer in {low}..{high}, "
                    f"got {value!r}"
                )

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": dict(self.params)}


def ivf_lists(spec: IndexSpec, documents: int) -> int:
    """The number of inverted lists for a collection of this size (nlist 0: about sqrt(n))."""
    wanted = spec.params["nlist"] or round(math.sqrt(documents))
    return max(1, min(wanted, documents // IVF_POINTS_PER_LIST))


def ivf_min_training(spec: IndexSpec, min_documents: int) -> int:
    """Documents needed before an ivf index is trained (searched exactly until then)."""
    return max(min_documents, spec.params["nlist"] * IVF_POINTS_PER_LIST)


def set_threads(threads: int) -> None:
    """FAISS's OpenMP threads for the process (0: leave FAISS's default, all cores)."""
    if threads > 0:
        import faiss

        faiss.omp_set_num_threads(threads)


class VectorIndex:
    """One FAISS index of unit vectors, searched by inner product, addressed by int64 ids."""

    def __init__(self, spec: IndexSpec, dims: int, faiss_index: Any, trained_on: int) -> None:
        self.spec = spec
        self.dims = dims
        self._index = faiss_index
        self.trained_on = trained_on
        """ivf: the documents its lists were trained on; 0 while it is still searched exactly."""

    @classmethod
    def create(
        cls, spec: IndexSpec, dims: int, train: FloatArray | None = None, documents: int = 0
    ) -> VectorIndex:
        """An empty index; ivf is trained on `train` (a sample of `documents`) when given,
        else searched exactly until trained."""
        import faiss

        if spec.kind == "hnsw":
            index: Any = faiss.index_factory(
                dims, f"IDMap2,HNSW{spec.params['m']}", faiss.METRIC_INNER_PRODUCT
            )
            graph: Any = faiss.downcast_index(index.index)
            graph.hnsw.efConstruction = spec.params["ef_construction"]
            return cls(spec, dims, index, 0)
        if spec.kind == "ivf" and train is not None and len(train) >= IVF_POINTS_PER_LIST:
            documents = max(documents, len(train))
            nlist = ivf_lists(spec, documents)
            index = faiss.index_factory(dims, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
            sample = train
            if len(train) > nlist * IVF_MAX_TRAIN_PER_LIST:
                rows = np.random.default_rng(0).choice(
                    len(train), nlist * IVF_MAX_TRAIN_PER_LIST, replace=False
                )
                sample = train[np.sort(rows)]
            index.train(np.ascontiguousarray(sample, dtype=np.float32))
            return cls(spec, dims, index, documents)
        index = faiss.index_factory(dims, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
        return cls(spec, dims, index, 0)

    @classmethod
    def from_bytes(cls, spec: IndexSpec, dims: int, data: bytes, trained_on: int) -> VectorIndex:
        """An index written by `to_bytes` (a FAISS index file; no pickles)."""
        import faiss

        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        if int(index.d) != dims:
            raise ValueError(f"index file holds {index.d}-dim vectors, expected {dims}")
        return cls(spec, dims, index, trained_on)

    def to_bytes(self) -> bytes:
        """The FAISS serialisation of the index."""
        import faiss

        return bytes(faiss.serialize_index(self._index))

    @property
    def ntotal(self) -> int:
        """Vectors held, hnsw tombstones included."""
        return int(self._index.ntotal)

    @property
    def exact(self) -> bool:
        """True when a search with k = ntotal ranks every vector held (flat, untrained ivf)."""
        return self.spec.kind == "flat" or (self.spec.kind == "ivf" and self.trained_on == 0)

    @property
    def removes(self) -> bool:
        """False for hnsw: removed ids stay behind as tombstones."""
        return self.spec.kind != "hnsw"

    def add(self, ids: IntArray, vectors: FloatArray) -> None:
        """Add unit vectors under the given ids (the caller never reuses an id)."""
        if len(ids) == 0:
            return
        if vectors.shape != (len(ids), self.dims):
            raise ValueError(f"expected ({len(ids)}, {self.dims}) vectors, got {vectors.shape}")
        self._index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32),
            np.ascontiguousarray(ids, dtype=np.int64),
        )

    def remove(self, ids: IntArray) -> int:
        """Remove ids; returns how many went. hnsw keeps them (tombstones) and returns 0."""
        if len(ids) == 0 or not self.removes:
            return 0
        return int(self._index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))

    def search(self, queries: FloatArray, k: int) -> tuple[FloatArray, IntArray]:
        """Top-k inner products and ids per query; missing results have id -1.

        Not safe to run concurrently with `add` or `remove` (FAISS's rule): the caller locks.
        """
        import faiss

        k = max(1, min(k, self.ntotal))
        if self.spec.kind == "hnsw":
            graph: Any = faiss.downcast_index(self._index.index)
            graph.hnsw.efSearch = max(self.spec.params["ef_search"], k)
        elif self.spec.kind == "ivf" and self.trained_on:
            self._index.nprobe = min(self.spec.params["nprobe"], int(self._index.nlist))
        scores, ids = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return cast(FloatArray, scores), cast(IntArray, ids)

    def describe(self) -> dict[str, Any]:
        """Kind, parameters and state, for the collection's info."""
        out = self.spec.as_dict()
        out["vectors"] = self.ntotal
        if self.spec.kind == "ivf":
            out["trained_on"] = self.trained_on
            out["lists"] = int(self._index.nlist) if self.trained_on else 0
        return out
