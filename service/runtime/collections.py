"""Collections: documents bulk-indexed through the engine and searched by meaning.

Each collection is a directory holding its SQLite store (the truth: texts, metadata, raw
pooled vectors), its whitening versions (npz) and FAISS snapshots of its index (a cache):

- Writes: one SQLite transaction per request, committed (fsync) before the answer, then the
  index catches up from the store. A request is all or nothing.
- Index: an `IndexView` (FAISS index + the whitening and dims its vectors were made with)
  replaced as a whole. Rebuilds (new kind, refit whitening, hnsw tombstones, ivf training)
  build a new view aside from the stored raw vectors, catch it up under the write lock and
  swap it in, so searches never stop.
- Recovery: load the snapshot the store points to, add rows newer than it and remove what
  was removed after it; without a usable snapshot, rebuild from the store.

All SQLite writes of a collection run on its own single writer thread, in order, so a
cancelled request's rollback can never overtake the statement it cancels.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import orjson

from service.errors import (
    ConflictError,
    NotFoundError,
    QueueFullError,
    TextTooLongError,
    ValidationError,
)
from service.runtime.docstore import DocStore, Document, Filter, WriteTxn
from service.runtime.engine import Engine
from service.runtime.index import (
    IVF_MAX_TRAIN_PER_LIST,
    PARAMS,
    IndexKind,
    IndexSpec,
    VectorIndex,
    ivf_lists,
    ivf_min_training,
)
from service.runtime.types import FloatArray
from service.runtime.whitening import Whitening, WhiteningAccumulator

log = logging.getLogger("simsvc.collections")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
STORE_FILE = "store.sqlite3"
WhiteningSource = Literal["collection", "bundle", "identity"]
T = TypeVar("T")


class CollectionObserver(Protocol):
    """Receives collection figures (the metrics module implements it)."""

    def documents(self, collection: str, count: int) -> None: ...

    def forget(self, collection: str) -> None: ...

    def searched(self, kind: str, seconds: float) -> None: ...

    def rebuilt(self, reason: str, seconds: float) -> None: ...


class _NullObserver:
    def documents(self, collection: str, count: int) -> None:
        pass

    def forget(self, collection: str) -> None:
        pass

    def searched(self, kind: str, seconds: float) -> None:
        pass

    def rebuilt(self, reason: str, seconds: float) -> None:
        pass


@dataclass(frozen=True)
class CollectionLimits:
    """Limits and policies (all settings)."""

    max_collections: int = 256
    batch_documents: int = 128
    max_id_chars: int = 256
    max_text_chars: int = 20_000
    max_k: int = 1000
    filter_oversample: int = 10
    max_candidates: int = 10_000
    snapshot_every: int = 10_000
    rebuild_dead_fraction: float = 0.25
    ivf_min_documents: int = 1000
    ivf_retrain_growth: float = 4.0
    queue_timeout_s: float = 30.0


@dataclass(frozen=True)
class IndexDefaults:
    """The index a collection gets when its creator does not say (all settings)."""

    kind: IndexKind = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 512
    ivf_nlist: int = 0
    ivf_nprobe: int = 48

    def params(self, kind: IndexKind) -> dict[str, int]:
        return {name: int(getattr(self, f"{kind}_{name}")) for name in PARAMS[kind]}


@dataclass(frozen=True)
class ModelInfo:
    """What made a collection's raw vectors; another model's vectors cannot be mixed in."""

    model: str
    pooling: str
    raw_dims: int

    @classmethod
    def of(cls, engine: Engine) -> ModelInfo:
        return cls(engine.model_name, engine.pooling, engine.core.dims)


@dataclass(frozen=True)
class WhiteningState:
    """A collection's whitening: the transform, its version, and what it was fitted on."""

    transform: Whitening
    version: int
    source: str
    documents: int = 0

    def meta(self) -> dict[str, Any]:
        return {"version": self.version, "source": self.source, "documents": self.documents}


@dataclass(frozen=True)
class Hit:
    document: Document
    score: float


def _embed(white: WhiteningState, dims: int, raw: FloatArray) -> FloatArray:
    return white.transform.apply(raw, normalize=True, dims=dims)


@dataclass
class IndexView:
    """An index with the whitening and dims its vectors were made with; swapped as a whole."""

    index: VectorIndex
    whitening: WhiteningState
    dims: int
    seq: int
    """The last store change the index reflects."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def embed(self, raw: FloatArray) -> FloatArray:
        """Whitened, cut to `dims`, unit length: what the index holds and queries use."""
        return _embed(self.whitening, self.dims, raw)

    def config(self) -> dict[str, Any]:
        return {**self.index.spec.as_dict(), "dims": self.dims}

    def layout(self) -> dict[str, Any]:
        """What a snapshot must match to be loaded for the current config."""
        return {**self.config(), "whitening": self.whitening.version}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable_replace(tmp: Path, final: Path) -> None:
    """fsync a finished temporary file, rename it over `final`, fsync the directory."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    _durable_replace(tmp, path)


def _whitening_file(directory: Path, version: int) -> Path:
    return directory / f"whitening-{version}.npz"


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValidationError(
            f"collection name {name!r} must be 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )


def check_documents(docs: Sequence[Document], limits: CollectionLimits) -> None:
    """Per-document limits, checked before anything is encoded or written."""
    for doc in docs:
        if not doc.id or len(doc.id) > limits.max_id_chars:
            raise ValidationError(
                f"document id {doc.id[:40]!r} must have 1 to {limits.max_id_chars} characters"
            )
        if not doc.text:
            raise ValidationError(f"document {doc.id!r} has an empty text")
        if len(doc.text) > limits.max_text_chars:
            raise TextTooLongError(
                f"document {doc.id!r} has {len(doc.text)} characters; the limit is "
                f"{limits.max_text_chars}"
            )
        try:
            orjson.dumps(doc.metadata)
        except orjson.JSONEncodeError as exc:
            raise ValidationError(
                f"document {doc.id!r} has metadata JSON cannot hold: {exc}"
            ) from exc


class Collection:
    """One collection: its store, its current index view and the locks that order changes."""

    def __init__(
        self,
        name: str,
        path: Path,
        store: DocStore,
        model: ModelInfo,
        limits: CollectionLimits,
        observer: CollectionObserver,
    ) -> None:
        self.name = name
        self.path = path
        self.store = store
        self.model = model
        self.limits = limits
        self._observer = observer
        self.view: IndexView | None = None
        self.closed = False
        self.unsnapshotted = 0
        self._pinned: int | None = None
        self.write_lock = asyncio.Lock()
        self.maintenance_lock = asyncio.Lock()
        self._writer = concurrent.futures.ThreadPoolExecutor(1, f"simsvc-{name}-writer")

    # -- life cycle (blocking; run off the event loop) ----------------------------------

    @classmethod
    def create(
        cls,
        root: Path,
        name: str,
        model: ModelInfo,
        spec: IndexSpec,
        dims: int,
        whitening: Whitening,
        limits: CollectionLimits,
        observer: CollectionObserver,
    ) -> Collection:
        """Create the directory aside, then rename it into place: it exists whole or not."""
        tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        whitening.save(tmp / "whitening-0.npz.tmp")
        _durable_replace(tmp / "whitening-0.npz.tmp", _whitening_file(tmp, 0))
        store = DocStore(tmp / STORE_FILE)
        txn = store.begin()
        txn.set_meta("model", dataclasses.asdict(model))
        txn.set_meta("config", {**spec.as_dict(), "dims": dims})
        source = "bundle" if whitening.fitted else "identity"
        txn.set_meta("whitening", WhiteningState(whitening, 0, source).meta())
        txn.set_meta("created_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        txn.commit()
        store.close()
        final = root / name
        os.rename(tmp, final)
        _fsync_dir(root)
        return cls.open(final, limits, observer)

    @classmethod
    def open(cls, path: Path, limits: CollectionLimits, observer: CollectionObserver) -> Collection:
        """Open a collection and recover its index from the snapshot and the store."""
        store = DocStore(path / STORE_FILE)
        try:
            with store.read() as r:
                model, config, white, snapshot = (
                    r.meta(k) for k in ("model", "config", "whitening", "snapshot")
                )
            if model is None or config is None or white is None:
                raise ValueError(f"{path / STORE_FILE} lacks the collection's metadata")
            transform = Whitening.load(_whitening_file(path, white["version"]))
            coll = cls(path.name, path, store, ModelInfo(**model), limits, observer)
            state = WhiteningState(transform, **white)
            spec = IndexSpec(config["kind"], config["params"])
            coll._recover(spec, int(config["dims"]), state, snapshot)
        except BaseException:
            store.close()
            raise
        return coll

    def _recover(
        self, spec: IndexSpec, dims: int, white: WhiteningState, snapshot: dict[str, Any] | None
    ) -> None:
        started = time.perf_counter()
        view = self._load_snapshot(spec, dims, white, snapshot)
        rebuilt = view is None
        if view is None:
            view = self.build(spec, dims, white)
        caught_up = self.catch_up(view)
        self.view = view
        if (rebuilt or caught_up) and self.store.seq:  # a new, empty collection needs none
            self.checkpoint(view)
            self._observer.rebuilt("recover", time.perf_counter() - started)
            log.info(
                "collection %s: %s, %d changes replayed from the store",
                self.name,
                "index rebuilt" if rebuilt else "snapshot loaded",
                caught_up,
            )
        self._clean_files()
        self._observer.documents(self.name, self.store.count)

    def _load_snapshot(
        self, spec: IndexSpec, dims: int, white: WhiteningState, snapshot: dict[str, Any] | None
    ) -> IndexView | None:
        if not snapshot:
            return None
        expected = {**spec.as_dict(), "dims": dims, "whitening": white.version}
        layout = dict(snapshot["layout"])
        trained_on = int(layout.pop("trained_on", 0))
        if layout != expected:
            return None
        try:
            data = (self.path / snapshot["file"]).read_bytes()
            index = VectorIndex.from_bytes(spec, dims, data, trained_on)
        except (OSError, RuntimeError, ValueError) as exc:
            log.warning("collection %s: snapshot unusable (%s); rebuilding", self.name, exc)
            return None
        return IndexView(index, white, dims, int(snapshot["seq"]))

    def _clean_files(self) -> None:
        """Remove temporaries, and snapshots and whitenings nothing points to any more."""
        with self.store.read() as r:
            snapshot = r.meta("snapshot") or {}
        assert self.view is not None
        keep = {snapshot.get("file"), "whitening-0.npz"}
        keep.add(_whitening_file(self.path, self.view.whitening.version).name)
        for p in self.path.iterdir():
            stale = p.suffix == ".tmp" or (
                p.name.startswith(("index-", "whitening-")) and p.name not in keep
            )
            if stale:
                p.unlink(missing_ok=True)

    def close(self) -> None:
        """Snapshot unsaved index changes, then close the store (on the writer thread)."""
        if self.closed:
            return
        if self.unsnapshotted and self.view is not None:
            self.checkpoint(self.view)
        self.closed = True
        self.store.close()

    # -- the writer thread ---------------------------------------------------------------

    async def run_write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking store work on the collection's single writer thread, in order."""
        return await asyncio.wrap_future(self._writer.submit(fn, *args))

    def submit_write(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue work on the writer thread without waiting (a cancelled request's rollback)."""
        with contextlib.suppress(RuntimeError):  # the collection was deleted meanwhile
            self._writer.submit(fn, *args)

    def shutdown(self) -> None:
        self._writer.shutdown(wait=True)

    # -- the index -----------------------------------------------------------------------

    def check_model(self, engine: Engine) -> None:
        """The engine must make the same kind of raw vectors the collection stores."""
        ours = ModelInfo.of(engine)
        if (ours.raw_dims, ours.pooling) != (self.model.raw_dims, self.model.pooling):
            raise ConflictError(
                f"collection {self.name!r} holds {self.model.raw_dims}-dim {self.model.pooling} "
                f"vectors of {self.model.model}; this server's model yields {ours.raw_dims}-dim "
                f"{ours.pooling} vectors: serve the collection's model or re-index"
            )

    def build(self, spec: IndexSpec, dims: int, white: WhiteningState) -> IndexView:
        """A new view built from every stored raw vector (no re-encoding)."""
        with self.store.read() as r:
            seq = r.seq()
            live = r.count()
            train = None
            if spec.kind == "ivf" and live >= ivf_min_training(spec, self.limits.ivf_min_documents):
                sample = r.sample(ivf_lists(spec, live) * IVF_MAX_TRAIN_PER_LIST)
                if sample is not None:
                    train = _embed(white, dims, sample)
            view = IndexView(VectorIndex.create(spec, dims, train, live), white, dims, seq)
            for seqs, raw in r.vectors():
                view.index.add(seqs, view.embed(raw))
        return view

    def catch_up(self, view: IndexView) -> int:
        """Apply store changes newer than the view: add new rows, remove removed ones."""
        with self.store.read() as r:
            target = r.seq()
            if target <= view.seq:
                return 0
            removed = r.removed_since(view.seq)
            added = 0
            for seqs, raw in r.vectors(after=view.seq):
                vectors = view.embed(raw)
                with view.lock:
                    view.index.add(seqs, vectors)
                added += len(seqs)
            with view.lock:
                view.index.remove(removed)
                view.seq = target
        return added + len(removed)

    def checkpoint(self, view: IndexView, meta: Mapping[str, Any] | None = None) -> None:
        """Write the view as a snapshot (atomically) and point the store at it.

        `meta` (a new config or whitening) is committed in the same transaction, so the
        store never names a config whose snapshot is missing.
        """
        with view.lock:
            data = view.index.to_bytes()
            seq = view.seq
            layout = {**view.layout(), "trained_on": view.index.trained_on}
        with self.store.read() as r:
            previous = (r.meta("snapshot") or {}).get("file")
        name = f"index-{seq:012d}-{uuid.uuid4().hex[:8]}.faiss"
        _write_durably(self.path / name, data)
        txn = self.store.begin()
        try:
            for key, value in (meta or {}).items():
                txn.set_meta(key, value)
            txn.set_meta("snapshot", {"file": name, "seq": seq, "layout": layout})
            txn.prune_removed(seq if self._pinned is None else min(seq, self._pinned))
            txn.commit()
        except BaseException:
            txn.rollback()
            (self.path / name).unlink(missing_ok=True)
            raise
        if previous and previous != name:
            (self.path / previous).unlink(missing_ok=True)
        self.unsnapshotted = 0

    def pin(self) -> int:
        """Keep the removal log from here on until `unpin` (a view is being built aside)."""
        self._pinned = self.store.seq
        return self._pinned

    def unpin(self) -> None:
        self._pinned = None

    def install(self, view: IndexView) -> None:
        """Catch a view built aside up, snapshot it with its config, and swap it in."""
        self.catch_up(view)
        meta = {"config": view.config(), "whitening": view.whitening.meta()}
        self.checkpoint(view, meta)
        self.view = view
        self._clean_files()  # the whitening it replaced

    def commit(self, txn: WriteTxn, changes: int) -> int:
        """Commit a write, bring the index up to date, snapshot now and then; the new count."""
        txn.commit()
        assert self.view is not None
        self.catch_up(self.view)
        self.unsnapshotted += changes
        if self.unsnapshotted >= self.limits.snapshot_every:
            self.checkpoint(self.view)
        self._observer.documents(self.name, self.store.count)
        return self.store.count

    def rebuild_reason(self) -> str | None:
        """Why the index should be rebuilt now: hnsw tombstones piled up, or ivf to train."""
        assert self.view is not None
        index, live = self.view.index, self.store.count
        if index.spec.kind == "hnsw":
            dead = index.ntotal - live
            if dead > 0 and dead > self.limits.rebuild_dead_fraction * live:
                return "tombstones"
        if index.spec.kind == "ivf":
            need = ivf_min_training(index.spec, self.limits.ivf_min_documents)
            if live >= max(need, self.limits.ivf_retrain_growth * index.trained_on):
                return "train"
        return None

    def fit_whitening(self, source: WhiteningSource, version: int) -> WhiteningState:
        """A new whitening: fitted on the stored raw vectors, the bundle's, or none."""
        dims = self.model.raw_dims
        if source == "identity":
            return WhiteningState(Whitening.identity(dims), version, source)
        if source == "bundle":
            return WhiteningState(Whitening.load(_whitening_file(self.path, 0)), version, source)
        acc = WhiteningAccumulator(dims)
        with self.store.read() as r:
            for _, raw in r.vectors():
                acc.update(raw)
        if acc.count <= dims:
            raise ConflictError(
                f"collection {self.name!r} has {acc.count} documents; fitting a whitening of "
                f"{dims}-dim vectors needs more than {dims}"
            )
        return WhiteningState(acc.fit(), version, source, acc.count)

    def save_whitening(self, state: WhiteningState) -> None:
        tmp = self.path / f"whitening-{state.version}.npz.tmp"
        state.transform.save(tmp)
        _durable_replace(tmp, _whitening_file(self.path, state.version))

    # -- reads (any thread) --------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        view = self.view
        assert view is not None
        return {
            "name": self.name,
            "count": self.store.count,
            "dims": view.dims,
            "index": view.index.describe(),
            "whitening": {**view.whitening.meta(), "dims": view.whitening.transform.dims_out},
            "model": dataclasses.asdict(self.model),
            "seq": self.store.seq,
        }

    def get(self, doc_id: str) -> Document:
        with self.store.read() as r:
            doc = r.get(doc_id)
        if doc is None:
            raise NotFoundError(f"collection {self.name!r} has no document {doc_id!r}")
        return doc

    def search(self, raw_query: FloatArray, k: int, where: Filter | None) -> list[Hit]:
        """The k nearest live documents matching the filter.

        Over-fetches by the filter's oversampling and by hnsw's tombstones, widens while
        too few candidates survive, and falls back to an exact scan of the matching
        documents when the approximate index runs dry or the candidates grow too many.
        """
        started = time.perf_counter()
        view = self.view
        assert view is not None
        query = view.embed(raw_query)
        try:
            total = view.index.ntotal
            if total == 0:
                return []
            dead = max(0, total - self.store.count)
            fetch = min(total, k * (self.limits.filter_oversample if where else 1) + dead)
            while True:
                with view.lock:
                    scores, ids = view.index.search(query, fetch)
                found = ids[0] >= 0
                seqs, values = ids[0][found], scores[0][found]
                with self.store.read() as r:
                    docs = r.fetch(seqs.tolist(), where)
                hits = [
                    Hit(docs[s], float(v))
                    for s, v in zip(seqs.tolist(), values.tolist(), strict=True)
                    if s in docs
                ]
                if len(hits) >= k or (fetch >= total and view.index.exact):
                    return hits[:k]
                if fetch >= total or fetch >= self.limits.max_candidates:
                    return self._exact(view, query, k, where)
                fetch = min(total, fetch * 4)
        finally:
            self._observer.searched(view.index.spec.kind, time.perf_counter() - started)

    def _exact(self, view: IndexView, query: FloatArray, k: int, where: Filter | None) -> list[Hit]:
        """Score every matching stored vector: memory bounded by one chunk plus k."""
        best_scores = np.empty(0, dtype=np.float32)
        best_seqs = np.empty(0, dtype=np.int64)
        with self.store.read() as r:
            for seqs, raw in r.vectors(where=where):
                scores = np.concatenate([best_scores, view.embed(raw) @ query[0]])
                all_seqs = np.concatenate([best_seqs, seqs])
                if len(scores) > k:
                    keep = np.argpartition(-scores, k)[:k]
                    scores, all_seqs = scores[keep], all_seqs[keep]
                best_scores, best_seqs = scores, all_seqs
            order = np.argsort(-best_scores, kind="stable")
            docs = r.fetch(best_seqs[order].tolist())
        return [
            Hit(docs[s], float(v))
            for s, v in zip(best_seqs[order].tolist(), best_scores[order].tolist(), strict=True)
            if s in docs
        ]


class Collections:
    """Every collection under one directory; the API's single entry point to them."""

    def __init__(
        self,
        root: Path,
        limits: CollectionLimits | None = None,
        defaults: IndexDefaults | None = None,
        observer: CollectionObserver | None = None,
    ) -> None:
        self.root = root
        self.limits = limits or CollectionLimits()
        self.defaults = defaults or IndexDefaults()
        self._observer: CollectionObserver = observer or _NullObserver()
        self._colls: dict[str, Collection] = {}
        self._lock = asyncio.Lock()

    def open(self) -> None:
        """Open every collection, recovering each index (blocking: run off the loop)."""
        if not self.root.is_dir():
            return  # created with the first collection
        for path in sorted(self.root.iterdir()):
            if path.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_dir() and _NAME.match(path.name):
                self._colls[path.name] = Collection.open(path, self.limits, self._observer)

    async def close(self) -> None:
        """Snapshot what is unsaved and close every store, after in-flight writes."""
        for coll in list(self._colls.values()):
            async with coll.write_lock:
                await coll.run_write(coll.close)
            coll.shutdown()
        self._colls.clear()

    def names(self) -> list[str]:
        return sorted(self._colls)

    def get(self, name: str) -> Collection:
        coll = self._colls.get(name)
        if coll is None:
            raise NotFoundError(f"no collection named {name!r}")
        return coll

    # -- collections ---------------------------------------------------------------------

    def _spec(
        self, current: IndexSpec | None, kind: IndexKind | None, params: Mapping[str, int]
    ) -> IndexSpec:
        kind = kind or (current.kind if current else self.defaults.kind)
        base = dict(current.params) if current and current.kind == kind else {}
        unknown = set(params) - set(PARAMS[kind])
        if unknown:
            raise ValidationError(
                f"{kind} takes parameters {sorted(PARAMS[kind])}, not {sorted(unknown)}"
            )
        try:
            return IndexSpec(kind, {**self.defaults.params(kind), **base, **params})
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc

    @staticmethod
    def _check_dims(dims: int, whitening: Whitening) -> int:
        if not 1 <= dims <= whitening.dims_out:
            raise ValidationError(f"dims must be in 1..{whitening.dims_out}, got {dims}")
        return dims

    async def _writable(
        self,
        name: str,
        engine: Engine,
        kind: IndexKind | None = None,
        params: Mapping[str, int] | None = None,
        dims: int | None = None,
    ) -> tuple[Collection, bool]:
        """The named collection, created (with these options) when absent."""
        check_name(name)
        async with self._lock:
            coll = self._colls.get(name)
            if coll is not None:
                return coll, False
            if len(self._colls) >= self.limits.max_collections:
                raise ConflictError(
                    f"{len(self._colls)} collections exist; the limit is "
                    f"{self.limits.max_collections}"
                )
            spec = self._spec(None, kind, params or {})
            dims = self._check_dims(dims or engine.whitening.dims_out, engine.whitening)
            coll = await asyncio.to_thread(
                Collection.create,
                self.root,
                name,
                ModelInfo.of(engine),
                spec,
                dims,
                engine.whitening,
                self.limits,
                self._observer,
            )
            self._colls[name] = coll
            log.info("collection %s created (%s, %d dims)", name, spec.kind, dims)
            return coll, True

    async def configure(
        self,
        name: str,
        engine: Engine,
        kind: IndexKind | None = None,
        params: Mapping[str, int] | None = None,
        dims: int | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Create a collection, or change its index kind, parameters or dims (a rebuild)."""
        coll, created = await self._writable(name, engine, kind, params, dims)
        if not created:
            coll.check_model(engine)
            view = coll.view
            assert view is not None
            spec = self._spec(view.index.spec, kind, params or {})
            new_dims = self._check_dims(dims or view.dims, view.whitening.transform)
            if (spec, new_dims) != (view.index.spec, view.dims):
                await self._rebuild(coll, "reconfigure", spec=spec, dims=new_dims)
        return coll.info(), created

    async def drop(self, name: str) -> None:
        """Delete a collection and its files, after its in-flight writes."""
        async with self._lock:
            coll = self.get(name)
            del self._colls[name]
        await self._remove(coll)

    async def _remove(self, coll: Collection, *, locked: bool = False) -> None:
        """Close a collection already unlisted and delete its directory.

        `locked`: the caller holds the collection's write lock.
        """

        def remove() -> None:
            coll.closed = True
            coll.store.close()
            trash = self.root / f".trash-{coll.name}-{uuid.uuid4().hex[:8]}"
            os.rename(coll.path, trash)
            _fsync_dir(self.root)
            shutil.rmtree(trash, ignore_errors=True)

        if locked:
            await coll.run_write(remove)
        else:
            async with coll.write_lock:
                await coll.run_write(remove)
        coll.shutdown()
        self._observer.forget(coll.name)
        log.info("collection %s deleted", coll.name)

    # -- documents -----------------------------------------------------------------------

    async def _encode(self, engine: Engine, texts: Sequence[str]) -> FloatArray:
        """Raw pooled vectors; waits (bounded) for room in the encoder queue."""
        deadline = time.monotonic() + self.limits.queue_timeout_s
        delay = 0.02
        while True:
            try:
                emb = await engine.embed(texts, whiten=False, normalize=False, limit=len(texts))
                return emb.vectors
            except QueueFullError:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(2 * delay, 1.0)

    async def upsert(
        self, name: str, engine: Engine, batches: AsyncIterator[Sequence[Document]]
    ) -> tuple[int, int]:
        """Insert or replace documents by id, batch by batch, in one transaction.

        Answers (indexed, count) once the transaction is durable. On any error nothing of
        the request is stored, and a collection this request created is removed again.
        """
        while True:
            coll, created = await self._writable(name, engine)
            coll.check_model(engine)
            async with coll.write_lock:
                if coll.closed:
                    continue  # deleted while we waited: create it afresh
                indexed = 0
                txn = await coll.run_write(coll.store.begin)
                try:
                    async for batch in batches:
                        check_documents(batch, self.limits)
                        raw = await self._encode(engine, [d.text for d in batch])
                        await coll.run_write(txn.upsert, batch, raw)
                        indexed += len(batch)
                    if not indexed:
                        raise ValidationError("no documents given")
                    count = await coll.run_write(coll.commit, txn, indexed)
                except BaseException:
                    coll.submit_write(txn.rollback)
                    if created and coll.store.count == 0:
                        async with self._lock:
                            if self._colls.get(name) is coll:
                                del self._colls[name]
                        await asyncio.shield(self._remove(coll, locked=True))
                    raise
            break
        await self._maintain(coll)
        return indexed, count

    async def get_document(self, name: str, doc_id: str) -> Document:
        return await asyncio.to_thread(self.get(name).get, doc_id)

    async def delete_document(self, name: str, doc_id: str) -> int:
        """Delete one document; the collection's new count."""
        coll = self.get(name)
        async with coll.write_lock:
            if coll.closed:
                raise NotFoundError(f"no collection named {name!r}")

            def delete() -> int:
                txn = coll.store.begin()
                try:
                    found = txn.delete(doc_id)
                except BaseException:
                    txn.rollback()
                    raise
                if not found:
                    txn.rollback()
                    raise NotFoundError(f"collection {name!r} has no document {doc_id!r}")
                return coll.commit(txn, 1)

            count = await coll.run_write(delete)
        await self._maintain(coll)
        return count

    async def search(
        self, name: str, engine: Engine, query: str, k: int, where: Filter | None = None
    ) -> list[Hit]:
        """The k documents nearest in meaning to `query` whose metadata match `where`."""
        coll = self.get(name)
        coll.check_model(engine)
        if not 1 <= k <= self.limits.max_k:
            raise ValidationError(f"k must be in 1..{self.limits.max_k}, got {k}")
        if where:
            for key, value in where.items():
                if isinstance(value, int) and not -(2**63) <= value < 2**63:
                    raise ValidationError(f"filter value of {key!r} is out of range")
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValidationError(f"filter value of {key!r} must be finite")
        emb = await engine.embed([query], whiten=False, normalize=False)
        return await asyncio.to_thread(coll.search, emb.vectors, k, where)

    # -- rebuilds ------------------------------------------------------------------------

    async def refit(self, name: str, source: WhiteningSource = "collection") -> dict[str, Any]:
        """Refit the collection's whitening (on its own documents by default) and rebuild."""
        coll = self.get(name)
        await self._rebuild(coll, "refit", source=source)
        return coll.info()

    async def _maintain(self, coll: Collection) -> None:
        """Rebuild after a write when the index asks for it, unless one is running."""
        reason = coll.rebuild_reason()
        if reason and not coll.maintenance_lock.locked() and not coll.closed:
            await self._rebuild(coll, reason)

    async def _rebuild(
        self,
        coll: Collection,
        reason: str,
        *,
        spec: IndexSpec | None = None,
        dims: int | None = None,
        source: WhiteningSource | None = None,
    ) -> None:
        """Build a new view aside (searches go on), then catch it up and swap it in."""
        async with coll.maintenance_lock:
            started = time.perf_counter()
            await coll.run_write(coll.pin)
            try:
                current = coll.view
                assert current is not None
                white = current.whitening
                if source is not None:
                    white = await asyncio.to_thread(coll.fit_whitening, source, white.version + 1)
                    dims = dims or current.dims
                    if dims > white.transform.dims_out:
                        raise ConflictError(
                            f"collection {coll.name!r} has {dims} dims; the {source} whitening "
                            f"yields {white.transform.dims_out}: lower dims first"
                        )
                    await asyncio.to_thread(coll.save_whitening, white)
                view = await asyncio.to_thread(
                    coll.build, spec or current.index.spec, dims or current.dims, white
                )
                async with coll.write_lock:
                    if coll.closed:
                        raise NotFoundError(f"no collection named {coll.name!r}")
                    await coll.run_write(coll.install, view)
            finally:
                coll.submit_write(coll.unpin)
            seconds = time.perf_counter() - started
            self._observer.rebuilt(reason, seconds)
            log.info("collection %s: index rebuilt (%s) in %.2fs", coll.name, reason, seconds)
