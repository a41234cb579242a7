"""FAISS behind a small typed interface: inner product over unit vectors, int64 ids.

Six kinds, each addressable by id so updates and deletes work for all of them:

- `flat`: exact search (`IDMap2,Flat`); ids are removed for real.
- `hnsw`: a graph (`IDMap2,HNSW`); FAISS cannot remove from it, so removed ids stay in the
  graph as tombstones. The caller filters them out (their documents are gone from the store),
  over-fetches by their number and rebuilds when they pile up.
- `ivf`: inverted lists (`IVF,Flat`); ids are removed for real. It needs training, so a
  collection too small to train one is searched exactly until it has grown enough.

Three compressed kinds keep a million 384-d vectors well inside a 2 GB server (float32 costs
1,536 B a vector; a flat index of a million, 1.5 GB, before the graph):

- `hnsw_sq8`: the graph over 8-bit scalar-quantised vectors (384 B each, ranges trained on a
  sample); tombstones like `hnsw`.
- `ivf_sq8`: inverted lists of 8-bit vectors (`IVF,SQ8`).
- `ivf_pq`: inverted lists of product-quantised codes (`pq_m` bytes a vector; no polysemous
  training: it takes minutes) with a refine step: the search takes `refine` x k candidates
  and the caller re-scores them on the exact vectors it keeps on disk (`refine` 1: none).

Every kind but flat and hnsw trains, and is searched exactly (a flat index) until trained.

FAISS is untyped; this module is the only one that touches it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np

from service.runtime.types import FloatArray, IntArray

IndexKind = Literal["flat", "hnsw", "ivf", "hnsw_sq8", "ivf_sq8", "ivf_pq"]
INDEX_KINDS: tuple[IndexKind, ...] = ("flat", "hnsw", "ivf", "hnsw_sq8", "ivf_sq8", "ivf_pq")
IVF_KINDS: frozenset[str] = frozenset({"ivf", "ivf_sq8", "ivf_pq"})
TRAINED_KINDS: frozenset[str] = IVF_KINDS | {"hnsw_sq8"}
GRAPH_KINDS: frozenset[str] = frozenset({"hnsw", "hnsw_sq8"})

PARAMS: dict[IndexKind, tuple[str, ...]] = {
    "flat": (),
    "hnsw": ("m", "ef_construction", "ef_search"),
    "ivf": ("nlist", "nprobe"),
    "hnsw_sq8": ("m", "ef_construction", "ef_search"),
    "ivf_sq8": ("nlist", "nprobe"),
    "ivf_pq": ("nlist", "nprobe", "pq_m", "refine"),
}
"""The parameters each kind takes (all positive integers; ivf's nlist 0 means automatic)."""

PQ_BITS = 8
"""Bits per product-quantiser code: 256 centroids per sub-vector."""
PQ_MIN_TRAINING = 2560
"""FAISS's k-means needs at least 256 points for 256 centroids; ten per centroid keeps the
codebooks usable (FAISS would like 39)."""

PARAM_RANGES: dict[str, tuple[int, int]] = {
    "m": (2, 256),
    "ef_construction": (1, 100_000),
    "ef_search": (1, 100_000),
    "nlist": (0, 1 << 20),
    "nprobe": (1, 1 << 20),
    "pq_m": (1, 1024),
    "refine": (1, 100),
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


def param_setting(kind: IndexKind, name: str) -> str:
    """The setting that holds a kind's default for a parameter: the compressed kinds share
    their family's (`hnsw_sq8`'s m is `hnsw_m`); `ivf_pq` has `ivf_pq_m` and `ivf_refine`."""
    if name == "pq_m":
        return "ivf_pq_m"
    if name == "refine":
        return "ivf_refine"
    return f"{'hnsw' if kind in GRAPH_KINDS else 'ivf'}_{name}"


def ivf_lists(spec: IndexSpec, documents: int) -> int:
    """The number of inverted lists for a collection of this size (nlist 0: about sqrt(n))."""
    wanted = spec.params["nlist"] or round(math.sqrt(documents))
    return max(1, min(wanted, documents // IVF_POINTS_PER_LIST))


def ivf_min_training(spec: IndexSpec, min_documents: int) -> int:
    """Documents needed before a trained kind is trained (searched exactly until then)."""
    need = max(min_documents, spec.params.get("nlist", 0) * IVF_POINTS_PER_LIST)
    return max(need, PQ_MIN_TRAINING) if spec.kind == "ivf_pq" else need


def training_sample(spec: IndexSpec, documents: int) -> int:
    """How many stored vectors to train a kind on."""
    if spec.kind == "hnsw_sq8":
        return 65_536  # per-dimension ranges: a sample of this size pins them down
    wanted = ivf_lists(spec, documents) * IVF_MAX_TRAIN_PER_LIST
    return max(wanted, 256 * IVF_MAX_TRAIN_PER_LIST) if spec.kind == "ivf_pq" else wanted


def pq_subquantizers(wanted: int, dims: int) -> int:
    """The largest divisor of dims not above `wanted` (FAISS splits vectors evenly)."""
    return max(m for m in range(1, min(wanted, dims) + 1) if dims % m == 0)


def _factory(spec: IndexSpec, dims: int, documents: int) -> str:
    """The FAISS factory string of a trained kind."""
    p = spec.params
    if spec.kind == "hnsw_sq8":
        return f"IDMap2,HNSW{p['m']}_SQ8"
    nlist = ivf_lists(spec, documents)
    if spec.kind == "ivf_sq8":
        return f"IVF{nlist},SQ8"
    if spec.kind == "ivf_pq":
        return f"IVF{nlist},PQ{pq_subquantizers(p['pq_m'], dims)}x{PQ_BITS}np"
    return f"IVF{nlist},Flat"


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
        """An empty index; a trained kind is trained on `train` (a sample of `documents`)
        when given, else searched exactly (a flat index) until trained."""
        import faiss

        if spec.kind == "hnsw":
            index: Any = faiss.index_factory(
                dims, f"IDMap2,HNSW{spec.params['m']}", faiss.METRIC_INNER_PRODUCT
            )
            graph: Any = faiss.downcast_index(index.index)
            graph.hnsw.efConstruction = spec.params["ef_construction"]
            return cls(spec, dims, index, 0)
        if spec.kind in TRAINED_KINDS and train is not None and len(train) >= IVF_POINTS_PER_LIST:
            documents = max(documents, len(train))
            index = faiss.index_factory(
                dims, _factory(spec, dims, documents), faiss.METRIC_INNER_PRODUCT
            )
            if spec.kind == "hnsw_sq8":
                graph = faiss.downcast_index(index.index)
                graph.hnsw.efConstruction = spec.params["ef_construction"]
            sample = train
            limit = training_sample(spec, documents)
            if len(train) > limit:
                rows = np.random.default_rng(0).choice(len(train), limit, replace=False)
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
        return self.spec.kind == "flat" or (self.spec.kind in TRAINED_KINDS and not self.trained_on)

    @property
    def removes(self) -> bool:
        """False for the graphs: removed ids stay behind as tombstones."""
        return self.spec.kind not in GRAPH_KINDS or (self.spec.kind == "hnsw_sq8" and self.exact)

    @property
    def refine(self) -> int:
        """Candidates per result the caller re-scores on exact vectors (1: none)."""
        return self.spec.params["refine"] if self.spec.kind == "ivf_pq" and self.trained_on else 1

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
        if self.spec.kind == "hnsw" or (self.spec.kind == "hnsw_sq8" and self.trained_on):
            graph: Any = faiss.downcast_index(self._index.index)
            graph.hnsw.efSearch = max(self.spec.params["ef_search"], k)
        elif self.spec.kind in IVF_KINDS and self.trained_on:
            self._index.nprobe = min(self.spec.params["nprobe"], int(self._index.nlist))
        scores, ids = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return cast(FloatArray, scores), cast(IntArray, ids)

    def describe(self) -> dict[str, Any]:
        """Kind, parameters and state, for the collection's info."""
        out = self.spec.as_dict()
        out["vectors"] = self.ntotal
        if self.spec.kind in TRAINED_KINDS:
            out["trained_on"] = self.trained_on
        if self.spec.kind in IVF_KINDS:
            out["lists"] = int(self._index.nlist) if self.trained_on else 0
        return out

    def bytes_per_vector(self) -> int:
        """What FAISS keeps per vector for the codes themselves (graphs and id maps extra)."""
        if self.spec.kind == "flat" or self.exact:
            return 4 * self.dims
        if self.spec.kind in ("hnsw_sq8", "ivf_sq8"):
            return self.dims
        if self.spec.kind == "ivf_pq":
            return pq_subquantizers(self.spec.params["pq_m"], self.dims) * PQ_BITS // 8
        return 4 * self.dims
