"""The PostgreSQL store: collections in a database that stateless replicas share.

Documents, metadata (jsonb, GIN-indexed for filters), raw pooled vectors (bytea, so refits
and index changes never re-encode), whitened vectors (pgvector, HNSW or ivfflat with inner
product) and each document's term counts, with an inverted index made of them (postings and
document frequencies, for BM25), live in the database; each replica holds only connections
and a cache of whitening transforms keyed by (collection id, version), which never change
once written. So a write acknowledged by one replica is visible to every other at once, and
there is nothing to invalidate.

Concurrency: writers of a collection hold a shared advisory lock on it for their
transaction, rebuilds (index changes, refits, drops) an exclusive one, so a rebuild never
misses a write; readers never wait (MVCC). See `postgres_writer` and `postgres_rebuild`.

The database going away: every call answers 503 (`store_unavailable`), `/ready` says why
(a background probe), and the connection pool reconnects by itself when it is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from service.errors import ValidationError
from service.runtime.index import IndexSpec, ivf_lists
from service.runtime.store.base import (
    CollectionObserver,
    CollectionSpec,
    CollectionStore,
    Document,
    Filter,
    Hit,
    ModelInfo,
    NullObserver,
    StoredCollection,
    StoreWriter,
    WhiteningFitter,
    WhiteningState,
    embed,
)
from service.runtime.store.postgres_catalog import (
    Whitenings,
    catalog_row,
    insert_whitening,
    set_local,
)
from service.runtime.store.postgres_pool import PostgresOptions, PostgresPool
from service.runtime.store.postgres_rebuild import Rebuilder
from service.runtime.store.postgres_schema import (
    Row,
    create_docs_table,
    docs_table,
    drop_tables,
    jsonb,
    q,
)
from service.runtime.store.postgres_search import bm25, nearest
from service.runtime.store.postgres_writer import PostgresWriter
from service.runtime.types import FloatArray

__all__ = ["PostgresOptions", "PostgresStore"]

log = logging.getLogger("simsvc.collections")
T = TypeVar("T")


class PostgresStore(CollectionStore):
    """Collections in PostgreSQL + pgvector."""

    kind = "postgres"

    def __init__(self, options: PostgresOptions, observer: CollectionObserver | None = None):
        self.options = options
        self.observer: CollectionObserver = observer or NullObserver()
        self._pool = PostgresPool(options)
        self._whitenings = Whitenings()
        self._rebuilder = Rebuilder(self._pool, self._whitenings, self.observer)

    # -- life cycle ----------------------------------------------------------------------

    @property
    def problem(self) -> str | None:
        return self._pool.problem

    async def open(self) -> None:
        """Migrate and open the pool; a database not reachable yet is retried in the
        background (the service starts and `/ready` says why it is not ready)."""
        await self._pool.open()

    async def close(self) -> None:
        await self._pool.close()

    # -- reads ---------------------------------------------------------------------------

    async def _read(
        self, name: str, fn: Callable[[Any, Row], Awaitable[T]], row: Row | None = None
    ) -> T:
        """Run `fn` in a read-only snapshot, on `row` when the request looked the collection
        up already, else on the row as of the snapshot; again, on a fresh row, if a rebuild
        swapped the table away."""
        import psycopg

        pool = self._pool.need_pool()
        for attempt in range(3):
            try:
                with self._pool.errors():
                    async with pool.connection() as conn, conn.transaction():
                        await conn.execute(
                            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                        )
                        return await fn(conn, row or await catalog_row(conn, name))
            except psycopg.errors.UndefinedTable:
                row = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def names(self) -> list[str]:
        pool = self._pool.need_pool()
        with self._pool.errors():
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT name FROM simsvc_collections ORDER BY name")
                return [r[0] for r in await cur.fetchall()]

    async def entry(self, name: str) -> PostgresEntry:
        async def read(conn: Any, row: Row) -> Row:
            return row

        return PostgresEntry(self, await self._read(name, read))

    async def model(self, name: str) -> ModelInfo:
        async def read(conn: Any, row: Row) -> ModelInfo:
            return row.model

        return await self._read(name, read)

    async def index_spec(self, name: str) -> tuple[IndexSpec, int]:
        async def read(conn: Any, row: Row) -> tuple[IndexSpec, int]:
            return row.spec, row.dims

        return await self._read(name, read)

    async def info(self, name: str) -> dict[str, Any]:
        async def read(conn: Any, row: Row) -> dict[str, Any]:
            white = await self._whitenings.get(conn, row.id, row.whitening)
            index: dict[str, Any] = {**row.spec.as_dict(), "vectors": row.count}
            if row.spec.kind == "ivf":
                index["trained_on"] = row.trained_on
                index["lists"] = ivf_lists(row.spec, row.trained_on) if row.trained_on else 0
            return {
                "name": row.name,
                "count": row.count,
                "dims": row.dims,
                "index": index,
                "whitening": {**white.meta(), "dims": white.transform.dims_out},
                "model": {
                    "model": row.model.model,
                    "pooling": row.model.pooling,
                    "raw_dims": row.model.raw_dims,
                },
                "lexical": {"analyzer": row.analyzer, "terms": row.lex_total},
                "search": dict(row.search),
                "seq": row.seq,
            }

        return await self._read(name, read)

    async def ids(self, name: str) -> set[str]:
        """Every document id of a collection (bulk indexing resumes by them)."""

        async def read(conn: Any, row: Row) -> set[str]:
            cur = await conn.execute(q("SELECT id FROM {t}", t=row.tbl))
            return {r[0] for r in await cur.fetchall()}

        return await self._read(name, read)

    async def get(self, name: str, doc_id: str, row: Row | None = None) -> Document | None:
        """One document (on the row a request looked up, when given)."""

        async def read(conn: Any, row: Row) -> Document | None:
            cur = await conn.execute(
                q("SELECT text, metadata FROM {t} WHERE id = %s", t=row.tbl), (doc_id,)
            )
            found = await cur.fetchone()
            return None if found is None else Document(doc_id, found[0], found[1])

        return await self._read(name, read, row)

    async def search(
        self, name: str, raw: FloatArray, k: int, where: Filter | None, row: Row | None = None
    ) -> list[Hit]:
        """The nearest documents (on the row a request looked up, when given)."""
        started = time.perf_counter()
        kind = "flat"

        async def read(conn: Any, row: Row) -> list[Hit]:
            nonlocal kind
            kind = row.spec.kind
            white = await self._whitenings.get(conn, row.id, row.whitening)
            query = embed(white, row.dims, raw)[0]
            params = row.spec.params
            approximate = row.spec.kind == "hnsw" or (row.spec.kind == "ivf" and row.trained_on)
            if row.spec.kind == "hnsw":
                await set_local(conn, "hnsw.ef_search", max(params["ef_search"], k))
                await set_local(conn, "hnsw.iterative_scan", "relaxed_order")
            elif approximate:
                lists = ivf_lists(row.spec, row.trained_on)
                await set_local(conn, "ivfflat.probes", min(params["nprobe"], lists))
                await set_local(conn, "ivfflat.iterative_scan", "relaxed_order")
            hits = await nearest(conn, row.tbl, query, k, where)
            if approximate and len(hits) < min(k, row.count):
                # The approximate scan ran dry (a selective filter): scan exactly.
                await set_local(conn, "enable_indexscan", "off")
                hits = await nearest(conn, row.tbl, query, k, where)
            return hits

        try:
            return await self._read(name, read, row)
        finally:
            self.observer.searched(kind, time.perf_counter() - started)

    async def lexical(
        self, name: str, query: str, k: int, where: Filter | None, row: Row | None = None
    ) -> list[Hit]:
        """The best BM25 matches (on the row a request looked up, when given)."""
        started = time.perf_counter()

        async def read(conn: Any, row: Row) -> list[Hit]:
            return await bm25(conn, row, query, k, where)

        try:
            return await self._read(name, read, row)
        finally:
            self.observer.searched("lexical", time.perf_counter() - started)

    # -- writes --------------------------------------------------------------------------

    async def create(self, name: str, spec: CollectionSpec) -> bool:
        pgvector_kind(spec.index)
        pool = self._pool.need_pool()
        with self._pool.errors():
            async with pool.connection() as conn, conn.transaction():
                model = spec.model
                cur = await conn.execute(
                    "INSERT INTO simsvc_collections (name, tbl, model, kind, params, dims, "
                    "analyzer, search) VALUES (%s, '', %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (name) DO NOTHING RETURNING id",
                    (
                        name,
                        jsonb(
                            {
                                "model": model.model,
                                "pooling": model.pooling,
                                "raw_dims": model.raw_dims,
                            }
                        ),
                        spec.index.kind,
                        jsonb(dict(spec.index.params)),
                        spec.dims,
                        spec.analyzer,
                        jsonb(dict(spec.search)),
                    ),
                )
                created = await cur.fetchone()
                if created is None:
                    return False
                cid = int(created[0])
                tbl = docs_table(cid, 0)
                await conn.execute(create_docs_table(tbl, spec.dims))
                await conn.execute(
                    "UPDATE simsvc_collections SET tbl = %s WHERE id = %s", (tbl, cid)
                )
                source = "bundle" if spec.whitening.fitted else "identity"
                await insert_whitening(conn, cid, WhiteningState(spec.whitening, 0, source))
                if spec.index.kind == "hnsw":
                    await self._rebuilder.create_index(conn, tbl, spec.index, 0)
        log.info("collection %s created (%s, %d dims)", name, spec.index.kind, spec.dims)
        return True

    async def drop(self, name: str, *, if_empty: bool = False) -> bool:
        pool = self._pool.need_pool()
        with self._pool.errors():
            async with pool.connection() as conn, conn.transaction():
                await set_local(conn, "statement_timeout", self.options.maintenance_ms())
                row = await catalog_row(conn, name)
                # The exclusive lock first, the row after: a writer holds its shared lock
                # and takes the row at commit, so the other order could deadlock.
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (row.id,))
                row = await catalog_row(conn, name, "FOR UPDATE")
                if if_empty and row.count:
                    return False
                await conn.execute("DELETE FROM simsvc_collections WHERE id = %s", (row.id,))
                await conn.execute(drop_tables(row.tbl))
        self.observer.forget(name)
        log.info("collection %s deleted", name)
        return True

    async def begin(self, name: str) -> StoreWriter:
        pool = self._pool.need_pool()
        with self._pool.errors():
            conn = await pool.getconn()
        try:
            with self._pool.errors():
                await conn.execute("BEGIN")
                row = await catalog_row(conn, name)
                await conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (row.id,))
                row = await catalog_row(conn, name)  # as of now: a rebuild may have just ended
                white = await self._whitenings.get(conn, row.id, row.whitening)
        except BaseException:
            await self._pool.release(conn, rollback=True)
            raise
        return PostgresWriter(self._pool, conn, row, white, self.observer, self.maintain)

    # -- rebuilds ------------------------------------------------------------------------

    async def maintain(self, name: str, count: int) -> None:
        await self._rebuilder.maintain(name, count)

    async def configure(
        self,
        name: str,
        index: IndexSpec | None = None,
        dims: int | None = None,
        analyzer: str | None = None,
        search: Mapping[str, Any] | None = None,
    ) -> None:
        if index is not None:
            pgvector_kind(index)
        await self._rebuilder.rebuild(
            name, "reconfigure", spec=index, dims=dims, analyzer=analyzer, search=search
        )

    async def refit(self, name: str, fitter: WhiteningFitter) -> None:
        await self._rebuilder.rebuild(name, "refit", fitter=fitter)


def pgvector_kind(spec: IndexSpec) -> None:
    """pgvector builds flat, hnsw and ivf(flat) indexes; the FAISS-compressed kinds are the
    local store's (PostgreSQL keeps its vectors in the table, not in server memory)."""
    if spec.kind not in ("flat", "hnsw", "ivf"):
        raise ValidationError(
            f"index kind {spec.kind!r} is the local store's; PostgreSQL takes flat, hnsw or ivf",
            param="index.kind",
        )


class PostgresEntry(StoredCollection):
    """A collection as a request found it: its catalog row, read once. Reads run on that
    row (a fresh one if a rebuild swapped its table meanwhile); writes take the lock and
    read the row again, as every writer does."""

    def __init__(self, store: PostgresStore, row: Row) -> None:
        self._store = store
        self._row = row
        self.name = row.name
        self.model = row.model
        self.search_overrides = dict(row.search)

    async def search(self, raw: FloatArray, k: int, where: Filter | None) -> list[Hit]:
        return await self._store.search(self.name, raw, k, where, self._row)

    async def lexical(self, query: str, k: int, where: Filter | None) -> list[Hit]:
        return await self._store.lexical(self.name, query, k, where, self._row)

    async def get(self, doc_id: str) -> Document | None:
        return await self._store.get(self.name, doc_id, self._row)

    async def begin(self) -> StoreWriter:
        return await self._store.begin(self.name)
