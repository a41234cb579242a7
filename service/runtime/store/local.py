"""The local store: every collection a directory under one root (SQLite + FAISS files).

The zero-set-up default for one process. Writes of a collection run in order on its own
writer thread under its write lock; rebuilds (a new index kind, a refit whitening, hnsw
tombstones, ivf training, repairing a degraded index) build aside and swap in under it.

A collection whose files cannot be opened is listed as unavailable (503 on use, with the
reason) and can be dropped; the rest of the service stays up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.errors import ConflictError, NotFoundError, ServiceError
from service.runtime.index import IndexSpec
from service.runtime.store.base import (
    CollectionObserver,
    CollectionSpec,
    CollectionStore,
    CollectionUnavailableError,
    Document,
    Filter,
    Hit,
    ModelInfo,
    NullObserver,
    StoredCollection,
    StoreWriter,
    WhiteningFitter,
    valid_name,
)
from service.runtime.store.docstore import WriteTxn
from service.runtime.store.local_collection import LocalCollection, LocalOptions
from service.runtime.store.local_files import fsync_dir
from service.runtime.types import FloatArray

log = logging.getLogger("simsvc.collections")


class IndexBuildError(ServiceError):
    """An index could not be built (the collection keeps its current one)."""

    error_type = "index_build_failed"


class LocalWriter(StoreWriter):
    """A write transaction on a local collection, holding its write lock until the end."""

    def __init__(self, store: LocalStore, coll: LocalCollection, txn: WriteTxn) -> None:
        self._store = store
        self._coll = coll
        self._txn = txn
        self._changes = 0
        self._done = False

    async def upsert(self, docs: Any, raw: FloatArray) -> None:
        await self._coll.run_write(self._txn.upsert, docs, raw)
        self._changes += len(docs)

    async def delete(self, doc_id: str) -> bool:
        found = await self._coll.run_write(self._txn.delete, doc_id)
        self._changes += int(found)
        return found

    async def commit(self) -> int:
        try:
            count = await self._coll.run_write(self._coll.commit, self._txn, self._changes)
        except BaseException:
            self.abort()
            raise
        self._release()
        await self._store.maintain(self._coll)
        return count

    def abort(self) -> None:
        if not self._done:
            self._coll.submit_write(self._txn.rollback)
            self._release()

    def _release(self) -> None:
        if not self._done:
            self._done = True
            self._coll.write_lock.release()


class LocalEntry(StoredCollection):
    """A local collection as a request found it: its open `LocalCollection`."""

    def __init__(self, store: LocalStore, coll: LocalCollection) -> None:
        self._store = store
        self._coll = coll
        self.name = coll.name
        self.model = coll.model
        self.search_overrides = dict(coll.search_defaults)

    async def search(self, raw: FloatArray, k: int, where: Filter | None) -> list[Hit]:
        return await asyncio.to_thread(self._coll.search, raw, k, where)

    async def lexical(self, query: str, k: int, where: Filter | None) -> list[Hit]:
        return await asyncio.to_thread(self._coll.lexical, query, k, where)

    async def get(self, doc_id: str) -> Document | None:
        return await asyncio.to_thread(self._coll.get, doc_id)

    async def begin(self) -> StoreWriter:
        return await self._store.begin_on(self._coll)


class LocalStore(CollectionStore):
    """Collections as directories under `root`."""

    kind = "local"

    def __init__(
        self,
        root: Path,
        options: LocalOptions | None = None,
        observer: CollectionObserver | None = None,
    ) -> None:
        self.root = root
        self.options = options or LocalOptions()
        self._observer: CollectionObserver = observer or NullObserver()
        self._colls: dict[str, LocalCollection] = {}
        self._broken: dict[str, str] = {}
        self._lock = asyncio.Lock()

    # -- life cycle ----------------------------------------------------------------------

    async def open(self) -> None:
        await asyncio.to_thread(self.open_all)

    def open_all(self) -> None:
        """Open every collection, recovering each index (blocking)."""
        if not self.root.is_dir():
            return  # created with the first collection
        for path in sorted(self.root.iterdir()):
            if path.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_dir() and valid_name(path.name):
                try:
                    self._colls[path.name] = LocalCollection.open(
                        path, self.options, self._observer
                    )
                except Exception as exc:  # noqa: BLE001 - reported per collection, not fatal
                    reason = f"{type(exc).__name__}: {exc}"
                    self._broken[path.name] = reason
                    log.error("collection %s cannot be opened: %s", path.name, reason)

    async def close(self) -> None:
        for coll in list(self._colls.values()):
            async with coll.write_lock:
                await coll.run_write(coll.close)
            coll.shutdown()
        self._colls.clear()

    # -- collections ---------------------------------------------------------------------

    async def names(self) -> list[str]:
        return sorted([*self._colls, *self._broken])

    def collection(self, name: str) -> LocalCollection:
        coll = self._colls.get(name)
        if coll is not None:
            return coll
        if name in self._broken:
            raise CollectionUnavailableError(
                f"collection {name!r} cannot be opened ({self._broken[name]}); "
                "delete it and index it again, or repair its files and restart"
            )
        raise NotFoundError(f"no collection named {name!r}")

    async def create(self, name: str, spec: CollectionSpec) -> bool:
        async with self._lock:
            if name in self._colls or name in self._broken:
                return False
            coll = await asyncio.to_thread(
                LocalCollection.create, self.root, name, spec, self.options, self._observer
            )
            self._colls[name] = coll
            log.info("collection %s created (%s, %d dims)", name, spec.index.kind, spec.dims)
            return True

    async def entry(self, name: str) -> LocalEntry:
        return LocalEntry(self, self.collection(name))

    async def model(self, name: str) -> ModelInfo:
        return self.collection(name).model

    async def info(self, name: str) -> dict[str, Any]:
        return self.collection(name).info()

    async def index_spec(self, name: str) -> tuple[IndexSpec, int]:
        coll = self.collection(name)
        return coll.spec, coll.dims

    async def drop(self, name: str, *, if_empty: bool = False) -> bool:
        async with self._lock:
            if name in self._broken and not if_empty:
                del self._broken[name]
                await asyncio.to_thread(self._trash, self.root / name, name)
                log.info("unavailable collection %s deleted", name)
                return True
            coll = self.collection(name)
            if if_empty:
                async with coll.write_lock:
                    if coll.closed or coll.store.count:
                        return False
                    del self._colls[name]
                    await self._remove(coll, locked=True)
                return True
            del self._colls[name]
        await self._remove(coll)
        return True

    def _trash(self, path: Path, name: str) -> None:
        trash = self.root / f".trash-{name}-{uuid.uuid4().hex[:8]}"
        os.rename(path, trash)
        fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    async def _remove(self, coll: LocalCollection, *, locked: bool = False) -> None:
        """Close a collection already unlisted and delete its directory.

        `locked`: the caller holds the collection's write lock.
        """

        def remove() -> None:
            coll.closed = True
            coll.store.close()
            self._trash(coll.path, coll.name)

        if locked:
            await coll.run_write(remove)
        else:
            async with coll.write_lock:
                await coll.run_write(remove)
        coll.shutdown()
        self._observer.forget(coll.name)
        log.info("collection %s deleted", coll.name)

    # -- documents -----------------------------------------------------------------------

    async def begin(self, name: str) -> StoreWriter:
        return await self.begin_on(self.collection(name))

    async def begin_on(self, coll: LocalCollection) -> StoreWriter:
        """A write transaction on a collection already looked up (waits for its writer)."""
        await coll.write_lock.acquire()
        try:
            if coll.closed:
                raise NotFoundError(f"no collection named {coll.name!r}")
            txn = await coll.run_write(coll.store.begin)
        except BaseException:
            coll.write_lock.release()
            raise
        return LocalWriter(self, coll, txn)

    async def get(self, name: str, doc_id: str) -> Document | None:
        return await asyncio.to_thread(self.collection(name).get, doc_id)

    async def search(self, name: str, raw: FloatArray, k: int, where: Filter | None) -> list[Hit]:
        return await asyncio.to_thread(self.collection(name).search, raw, k, where)

    # -- rebuilds ------------------------------------------------------------------------

    async def lexical(self, name: str, query: str, k: int, where: Filter | None) -> list[Hit]:
        return await asyncio.to_thread(self.collection(name).lexical, query, k, where)

    async def configure(
        self,
        name: str,
        index: IndexSpec | None = None,
        dims: int | None = None,
        analyzer: str | None = None,
        search: Mapping[str, Any] | None = None,
    ) -> None:
        coll = self.collection(name)
        if analyzer is not None and analyzer != coll.store.analyzer:
            async with coll.write_lock:
                await coll.run_write(coll.reindex_lexical, analyzer)
        if search is not None and dict(search) != coll.search_defaults:
            async with coll.write_lock:
                await coll.run_write(coll.set_search_defaults, search)
        if (index or coll.spec, dims or coll.dims) != (coll.spec, coll.dims) or coll.view is None:
            await self._rebuild(coll, "reconfigure", spec=index, dims=dims)

    async def refit(self, name: str, fitter: WhiteningFitter) -> None:
        await self._rebuild(self.collection(name), "refit", fitter=fitter)

    async def maintain(self, coll: LocalCollection) -> None:
        """After a write: rebuild when the index asks for it, unless one is running.

        The write is already durable, so a failed rebuild is logged, not answered."""
        reason = coll.rebuild_reason()
        if reason and not coll.maintenance_lock.locked() and not coll.closed:
            try:
                await self._rebuild(coll, reason)
            except (ServiceError, MemoryError, RuntimeError, ValueError) as exc:
                if coll.view is None:
                    coll.degrade(f"repair failed: {type(exc).__name__}: {exc}")
                log.error("collection %s: %s rebuild failed: %s", coll.name, reason, exc)

    async def _rebuild(
        self,
        coll: LocalCollection,
        reason: str,
        *,
        spec: IndexSpec | None = None,
        dims: int | None = None,
        fitter: WhiteningFitter | None = None,
    ) -> None:
        """Build a new view aside (searches go on), then catch it up and swap it in."""
        async with coll.maintenance_lock:
            started = time.perf_counter()
            await coll.run_write(coll.pin)
            try:
                white = coll.whitening
                spec, dims = spec or coll.spec, dims or coll.dims
                if fitter is not None:
                    version = white.version + 1
                    white = await asyncio.to_thread(
                        lambda: fitter(coll.fit_source(), coll.original_whitening(), version)
                    )
                    if dims > white.transform.dims_out:
                        raise ConflictError(
                            f"collection {coll.name!r} has {dims} dims; the {white.source} "
                            f"whitening yields {white.transform.dims_out}: lower dims first"
                        )
                    await asyncio.to_thread(coll.save_whitening, white)
                try:
                    view = await asyncio.to_thread(coll.build, spec, dims, white)
                except (MemoryError, RuntimeError) as exc:
                    raise IndexBuildError(
                        f"collection {coll.name!r}: building the {spec.kind} index failed "
                        f"({type(exc).__name__}: {exc}); the current index stays"
                    ) from exc
                async with coll.write_lock:
                    if coll.closed:
                        raise NotFoundError(f"no collection named {coll.name!r}")
                    await coll.run_write(coll.install, view)
            finally:
                coll.submit_write(coll.unpin)
            seconds = time.perf_counter() - started
            self._observer.rebuilt(reason, seconds)
            log.info("collection %s: index rebuilt (%s) in %.2fs", coll.name, reason, seconds)
