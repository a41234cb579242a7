"""One collection of the local store: a SQLite file (the truth) and FAISS snapshots (a cache).

- Writes: one SQLite transaction per request, committed (fsync) before the answer, then the
  index catches up from the store. A request is all or nothing.
- Index: an `IndexView` (FAISS index + the whitening and dims its vectors were made with)
  replaced as a whole. Rebuilds build a new view aside from the stored raw vectors, catch it
  up under the write lock and swap it in, so searches never stop.
- Recovery: load the snapshot the store points to, add rows newer than it and remove what
  was removed after it; without a usable snapshot, rebuild from the store.
- Degraded: when the index cannot be built or caught up (out of memory, say), the collection
  still answers, by scanning the stored vectors exactly, until a rebuild succeeds. A
  committed document is never unsearchable.

Everything here blocks; `service.runtime.store.local` runs it off the event loop, all SQLite
writes of a collection on its own single writer thread, in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from service.runtime.index import TRAINED_KINDS, IndexSpec, ivf_min_training
from service.runtime.store.base import (
    CollectionObserver,
    CollectionSpec,
    Document,
    Filter,
    Hit,
    ModelInfo,
    WhiteningState,
    embed,
)
from service.runtime.store.docstore import DocStore, WriteTxn
from service.runtime.store.local_files import (
    STORE_FILE,
    durable_replace,
    fsync_dir,
    whitening_file,
    write_durably,
)
from service.runtime.store.local_index import IndexView, build_view, catch_up, load_snapshot
from service.runtime.store.local_search import exact_scan, lexical_search, search_view
from service.runtime.types import FloatArray
from service.runtime.whitening import Whitening

log = logging.getLogger("simsvc.collections")

T = TypeVar("T")


@dataclass(frozen=True)
class LocalOptions:
    """The local store's policies (all settings)."""

    filter_oversample: int = 10
    max_candidates: int = 10_000
    snapshot_every: int = 10_000
    rebuild_dead_fraction: float = 0.25
    ivf_min_documents: int = 1000
    ivf_retrain_growth: float = 4.0
    repair_every_s: float = 60.0
    """A degraded collection retries building its index after a write this often."""


class LocalCollection:
    """One collection: its store, its index view (or why there is none) and its locks."""

    def __init__(
        self,
        name: str,
        path: Path,
        store: DocStore,
        model: ModelInfo,
        options: LocalOptions,
        observer: CollectionObserver,
    ) -> None:
        self.name = name
        self.path = path
        self.store = store
        self.model = model
        self.options = options
        self._observer = observer
        self.spec = IndexSpec("flat")
        self.dims = model.raw_dims
        self.whitening = WhiteningState(Whitening.identity(model.raw_dims), 0, "identity")
        self.view: IndexView | None = None
        self.search_defaults: dict[str, Any] = {}
        self.problem: str | None = None
        """Why the index is not in use (searches scan the store exactly meanwhile)."""
        self._repair_at = 0.0
        self.closed = False
        self.unsnapshotted = 0
        self._pinned: int | None = None
        self.write_lock = asyncio.Lock()
        self.maintenance_lock = asyncio.Lock()
        self._writer = concurrent.futures.ThreadPoolExecutor(1, f"simsvc-{name}-writer")

    # -- life cycle ----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: Path,
        name: str,
        spec: CollectionSpec,
        options: LocalOptions,
        observer: CollectionObserver,
    ) -> LocalCollection:
        """Create the directory aside, then rename it into place: it exists whole or not."""
        tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        spec.whitening.save(tmp / "whitening-0.npz.tmp")
        durable_replace(tmp / "whitening-0.npz.tmp", whitening_file(tmp, 0))
        store = DocStore(tmp / STORE_FILE)
        txn = store.begin()
        txn.set_meta("model", dataclasses.asdict(spec.model))
        txn.set_meta("config", {**spec.index.as_dict(), "dims": spec.dims})
        source = "bundle" if spec.whitening.fitted else "identity"
        txn.set_meta("whitening", WhiteningState(spec.whitening, 0, source).meta())
        txn.set_meta("lexical", {"analyzer": spec.analyzer})
        txn.set_meta("search", dict(spec.search))
        txn.set_meta("created_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        txn.commit()
        store.close()
        final = root / name
        os.rename(tmp, final)
        fsync_dir(root)
        return cls.open(final, options, observer)

    @classmethod
    def open(
        cls, path: Path, options: LocalOptions, observer: CollectionObserver
    ) -> LocalCollection:
        """Open a collection and recover its index from the snapshot and the store.

        A store that cannot be read raises; an index that cannot be rebuilt leaves the
        collection open in degraded mode (exact scans) with the reason in `problem`.
        """
        store = DocStore(path / STORE_FILE)
        try:
            with store.read() as r:
                model, config, white, snapshot, search = (
                    r.meta(k) for k in ("model", "config", "whitening", "snapshot", "search")
                )
                lexical_behind = not store.lexical_meta or r.lexical_count() != store.count
            if model is None or config is None or white is None:
                raise ValueError(f"{path / STORE_FILE} lacks the collection's metadata")
            transform = Whitening.load(whitening_file(path, white["version"]))
            coll = cls(path.name, path, store, ModelInfo(**model), options, observer)
            coll.whitening = WhiteningState(transform, **white)
            coll.spec = IndexSpec(config["kind"], config["params"])
            coll.dims = int(config["dims"])
            coll.search_defaults = dict(search or {})
            if lexical_behind:  # written before the lexical index existed, or out of step
                coll.reindex_lexical(store.analyzer)
        except BaseException:
            store.close()
            raise
        try:
            coll._recover(snapshot)
        except Exception as exc:  # noqa: BLE001 - the store is intact: serve it by scanning
            coll.degrade(f"index recovery failed: {type(exc).__name__}: {exc}")
        coll._clean_files()
        observer.documents(coll.name, store.count)
        observer.lexical_terms(coll.name, store.lex_total)
        return coll

    def reindex_lexical(self, analyzer: str) -> None:
        """Rebuild the lexical index from the stored texts, in one transaction (blocking)."""
        started = time.perf_counter()
        txn = self.store.begin()
        try:
            done = txn.reindex_lexical(analyzer)
            txn.commit()
        except BaseException:
            txn.rollback()
            raise
        self._observer.rebuilt("lexical", time.perf_counter() - started)
        self._observer.lexical_terms(self.name, self.store.lex_total)
        log.info(
            "collection %s: lexical index rebuilt (%s, %d documents)", self.name, analyzer, done
        )

    def set_search_defaults(self, search: Mapping[str, Any]) -> None:
        txn = self.store.begin()
        try:
            txn.set_meta("search", dict(search))
            txn.commit()
        except BaseException:
            txn.rollback()
            raise
        self.search_defaults = dict(search)

    def degrade(self, reason: str) -> None:
        """Stop using the index: searches scan the store exactly until a rebuild succeeds."""
        log.error("collection %s: %s; searching by exact scan until repaired", self.name, reason)
        self.view = None
        self.problem = reason
        self._repair_at = time.monotonic() + self.options.repair_every_s

    def _recover(self, snapshot: dict[str, Any] | None) -> None:
        started = time.perf_counter()
        view = load_snapshot(self.path, snapshot, self.spec, self.dims, self.whitening)
        rebuilt = view is None
        if view is None:
            view = self.build(self.spec, self.dims, self.whitening)
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

    def _clean_files(self) -> None:
        """Remove temporaries, and snapshots and whitenings nothing points to any more."""
        with self.store.read() as r:
            snapshot = r.meta("snapshot") or {}
        keep = {snapshot.get("file"), "whitening-0.npz"}
        keep.add(whitening_file(self.path, self.whitening.version).name)
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
            with contextlib.suppress(Exception):  # the store has it all; recovery replays
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

    def build(self, spec: IndexSpec, dims: int, white: WhiteningState) -> IndexView:
        """A new view built from every stored raw vector (no re-encoding)."""
        return build_view(self.store, spec, dims, white, self.options.ivf_min_documents)

    def catch_up(self, view: IndexView) -> int:
        """Apply store changes newer than the view: add new rows, remove removed ones."""
        return catch_up(self.store, view)

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
        write_durably(self.path / name, data)
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
        self.spec, self.dims, self.whitening = view.index.spec, view.dims, view.whitening
        self.problem = None
        self._clean_files()  # the whitening it replaced

    def commit(self, txn: WriteTxn, changes: int) -> int:
        """Commit a write, bring the index up to date, snapshot now and then; the new count.

        Once committed the write stands: an index that fails to take it is dropped (the
        collection degrades to exact scans) rather than leave the documents unsearchable.
        """
        txn.commit()
        if self.view is not None:
            try:
                self.catch_up(self.view)
                self.unsnapshotted += changes
                if self.unsnapshotted >= self.options.snapshot_every:
                    self.checkpoint(self.view)
            except Exception as exc:  # noqa: BLE001 - the write is durable; the cache is not
                self.degrade(f"index update failed: {type(exc).__name__}: {exc}")
        self._observer.documents(self.name, self.store.count)
        self._observer.lexical_terms(self.name, self.store.lex_total)
        return self.store.count

    def rebuild_reason(self) -> str | None:
        """Why the index should be rebuilt now: hnsw tombstones piled up, ivf to train, or a
        degraded collection due for another repair attempt."""
        if self.view is None:
            return "repair" if time.monotonic() >= self._repair_at else None
        index, live = self.view.index, self.store.count
        if not index.removes:
            dead = index.ntotal - live
            if dead > 0 and dead > self.options.rebuild_dead_fraction * live:
                return "tombstones"
        if index.spec.kind in TRAINED_KINDS:
            need = ivf_min_training(index.spec, self.options.ivf_min_documents)
            if live >= max(need, self.options.ivf_retrain_growth * index.trained_on):
                return "train"
        return None

    def fit_source(self) -> Callable[[], Any]:
        """Raw vectors of every live document, chunk by chunk, from one read snapshot."""

        def chunks() -> Any:
            with self.store.read() as r:
                for _, raw in r.vectors():
                    yield raw

        return chunks

    def original_whitening(self) -> Whitening:
        return Whitening.load(whitening_file(self.path, 0))

    def save_whitening(self, state: WhiteningState) -> None:
        tmp = self.path / f"whitening-{state.version}.npz.tmp"
        state.transform.save(tmp)
        durable_replace(tmp, whitening_file(self.path, state.version))

    # -- reads (any thread) --------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        view = self.view
        if view is not None:
            index = view.index.describe()
        else:
            index = {**self.spec.as_dict(), "vectors": 0, "state": "degraded"}
            index["problem"] = self.problem
        return {
            "name": self.name,
            "count": self.store.count,
            "dims": self.dims,
            "index": index,
            "whitening": {**self.whitening.meta(), "dims": self.whitening.transform.dims_out},
            "model": dataclasses.asdict(self.model),
            "lexical": {"analyzer": self.store.analyzer, "terms": self.store.lex_total},
            "search": dict(self.search_defaults),
            "seq": self.store.seq,
        }

    def get(self, doc_id: str) -> Document | None:
        with self.store.read() as r:
            return r.get(doc_id)

    def search(self, raw_query: FloatArray, k: int, where: Filter | None) -> list[Hit]:
        """The k nearest live documents matching the filter: through the index view, or by
        an exact scan of the store while the collection is degraded."""
        started = time.perf_counter()
        view = self.view
        kind = "exact" if view is None else view.index.spec.kind
        try:
            if view is None:
                query = embed(self.whitening, self.dims, raw_query)
                return exact_scan(self.store, self.whitening, self.dims, query, k, where)
            o = self.options
            query = view.embed(raw_query)
            return search_view(
                self.store, view, query, k, where, o.filter_oversample, o.max_candidates
            )
        finally:
            self._observer.searched(kind, time.perf_counter() - started)

    def lexical(self, query: str, k: int, where: Filter | None) -> list[Hit]:
        """The k best BM25 matches of the query's analysed terms (FTS5's bm25())."""
        started = time.perf_counter()
        try:
            return lexical_search(self.store, query, k, where)
        finally:
            self._observer.searched("lexical", time.perf_counter() - started)
