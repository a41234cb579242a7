"""The PostgreSQL store: collections in a database that stateless replicas share.

Documents, metadata (jsonb, GIN-indexed for filters), raw pooled vectors (bytea, so refits
and index changes never re-encode), whitened vectors (pgvector, HNSW or ivfflat with inner
product) and each document's term counts (jsonb, GIN-indexed, for BM25) live in the
database; each replica holds only connections and a cache of whitening transforms keyed by
(collection id, version), which never change once written. So a write acknowledged by one
replica is visible to every other at once, and there is nothing to invalidate.

Concurrency: writers of a collection hold a shared advisory lock on it for their
transaction, rebuilds (index changes, refits, drops) an exclusive one, so a rebuild never
misses a write; readers never wait (MVCC). See `postgres_writer` and `postgres_rebuild`.

The database going away: every call answers 503 (`store_unavailable`), `/ready` says why
(a background probe), and the connection pool reconnects by itself when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from service.errors import NotFoundError, ValidationError
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
    StoreUnavailableError,
    StoreWriter,
    WhiteningFitter,
    WhiteningState,
    embed,
)
from service.runtime.store.postgres_rebuild import Rebuilder
from service.runtime.store.postgres_schema import (
    COLUMNS,
    STAGING,
    Row,
    create_docs_table,
    docs_table,
    jsonb,
    q,
)
from service.runtime.store.postgres_search import bm25, nearest
from service.runtime.store.postgres_writer import PostgresWriter
from service.runtime.types import FloatArray
from service.runtime.whitening import Whitening

log = logging.getLogger("simsvc.collections")
T = TypeVar("T")


@dataclass(frozen=True)
class PostgresOptions:
    """Connection and policy settings of the PostgreSQL store (all settings)."""

    url: str
    pool_min: int = 1
    pool_max: int = 10
    connect_timeout_s: float = 5.0
    pool_timeout_s: float = 10.0
    statement_timeout_s: float = 30.0
    maintenance_timeout_s: float = 3600.0
    health_interval_s: float = 2.0
    ivf_min_documents: int = 1000
    ivf_retrain_growth: float = 4.0
    copy_chunk: int = 2048


class PostgresStore(CollectionStore):
    """Collections in PostgreSQL + pgvector."""

    kind = "postgres"

    def __init__(self, options: PostgresOptions, observer: CollectionObserver | None = None):
        self.options = options
        self.observer: CollectionObserver = observer or NullObserver()
        self._pool: Any = None
        self._problem: str | None = "connecting to the database"
        self._whitenings: dict[tuple[int, int], WhiteningState] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._health: asyncio.Task[None] | None = None
        self._rebuilder = Rebuilder(self)

    # -- life cycle ----------------------------------------------------------------------

    @property
    def problem(self) -> str | None:
        return self._problem

    def spawn(self, aw: Awaitable[Any]) -> None:
        """Run a coroutine in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def open(self) -> None:
        """Migrate and open the pool; a database not reachable yet is retried in the
        background (the service starts and `/ready` says why it is not ready)."""
        try:
            await self._prepare()
        except Exception as exc:  # noqa: BLE001 - reported by /ready, retried by the probe
            self._down(exc)
        self._health = asyncio.create_task(self._probe())

    async def _prepare(self) -> None:
        import psycopg
        from psycopg_pool import AsyncConnectionPool

        from service.runtime.store.postgres_schema import migrate

        async with await psycopg.AsyncConnection.connect(
            self.options.url, autocommit=True, connect_timeout=self._connect_timeout()
        ) as conn:
            version = await migrate(conn)
        pool = AsyncConnectionPool(
            self.options.url,
            min_size=self.options.pool_min,
            max_size=self.options.pool_max,
            timeout=self.options.pool_timeout_s,
            kwargs={"autocommit": True, "connect_timeout": self._connect_timeout()},
            configure=self._configure,
            check=AsyncConnectionPool.check_connection,
            open=False,
            name="simsvc",
        )
        await pool.open(wait=False)
        self._pool = pool
        self._problem = None
        log.info("postgres store ready (schema version %d)", version)

    def _connect_timeout(self) -> int:
        return max(1, round(self.options.connect_timeout_s))

    async def _configure(self, conn: Any) -> None:
        from pgvector.psycopg import register_vector_async

        await register_vector_async(conn)
        ms = str(round(self.options.statement_timeout_s * 1000))
        await conn.execute("SELECT set_config('statement_timeout', %s, false)", (ms,))
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {STAGING} (id text, text text, metadata jsonb, "
            "raw bytea, emb vector, tf jsonb, lex_len integer) ON COMMIT DELETE ROWS"
        )

    async def _probe(self) -> None:
        """Keep `problem` current: the readiness probe and the switch back after an outage."""
        while True:
            await asyncio.sleep(self.options.health_interval_s)
            try:
                if self._pool is None:
                    await self._prepare()
                    continue
                async with self._pool.connection(timeout=self.options.connect_timeout_s) as c:
                    await c.execute("SELECT 1")
                if self._problem is not None:
                    log.info("database reachable again")
                self._problem = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means "not available"
                self._down(exc)

    def _down(self, exc: BaseException) -> None:
        message = f"database unavailable: {type(exc).__name__}: {exc}".strip()
        if self._problem != message:
            log.error("%s", message)
        self._problem = message

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Database failures as service errors: unreachable or timed out -> 503."""
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            yield
        except PoolTimeout as exc:
            self._down(exc)
            raise StoreUnavailableError(
                "no database connection became free in time: the database is down or "
                "overloaded; retry later"
            ) from exc
        except psycopg.errors.QueryCanceled as exc:
            raise StoreUnavailableError(
                f"the database did not answer within the statement timeout "
                f"({self.options.statement_timeout_s:g} s); retry later"
            ) from exc
        except psycopg.OperationalError as exc:
            self._down(exc)
            raise StoreUnavailableError(f"database unavailable: {exc}") from exc
        except psycopg.DataError as exc:
            raise ValidationError(f"the database refused the data: {exc}") from exc

    def need_pool(self) -> Any:
        if self._pool is None:
            raise StoreUnavailableError(f"the store is not ready: {self._problem}")
        return self._pool

    async def release(self, conn: Any, rollback: bool = False) -> None:
        """Return a writer's connection to the pool (rolled back when asked)."""
        try:
            if rollback and not conn.closed:
                await conn.execute("ROLLBACK")
        except Exception:
            log.debug("rollback failed", exc_info=True)
        finally:
            if self._pool is not None:
                await self._pool.putconn(conn)

    # -- the catalog ---------------------------------------------------------------------

    @staticmethod
    async def set_local(conn: Any, key: str, value: object) -> None:
        """A setting for the rest of the transaction."""
        await conn.execute("SELECT set_config(%s, %s, true)", (key, str(value)))

    async def row(self, conn: Any, name: str, lock: str = "") -> Row:
        """A collection's catalog row (`lock`: e.g. FOR UPDATE)."""
        cur = await conn.execute(
            f"SELECT {COLUMNS} FROM simsvc_collections WHERE name = %s {lock}", (name,)
        )
        found = await cur.fetchone()
        if found is None:
            raise NotFoundError(f"no collection named {name!r}")
        return Row.parse(found)

    async def whitening(self, conn: Any, cid: int, version: int) -> WhiteningState:
        """A whitening version (cached: a version never changes once written)."""
        key = (cid, version)
        state = self._whitenings.get(key)
        if state is None:
            cur = await conn.execute(
                "SELECT source, documents, dims_in, dims_out, mu, w FROM simsvc_whitenings "
                "WHERE collection = %s AND version = %s",
                key,
            )
            found = await cur.fetchone()
            if found is None:
                raise NotFoundError(f"collection {cid} has no whitening version {version}")
            source, documents, dims_in, dims_out, mu, w = found
            if w is None:
                transform = Whitening.identity(int(dims_in))
            else:
                transform = Whitening(
                    int(dims_in),
                    np.frombuffer(mu, dtype=np.float32).copy(),
                    np.frombuffer(w, dtype=np.float32).reshape(int(dims_in), int(dims_out)).copy(),
                )
            state = WhiteningState(transform, version, source, int(documents))
            self._whitenings[key] = state
        return state

    @staticmethod
    async def insert_whitening(conn: Any, cid: int, state: WhiteningState) -> None:
        t = state.transform
        await conn.execute(
            "INSERT INTO simsvc_whitenings (collection, version, source, documents, dims_in, "
            "dims_out, mu, w) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                cid,
                state.version,
                state.source,
                state.documents,
                t.dims_in,
                t.dims_out,
                None if t.mu is None else np.ascontiguousarray(t.mu, np.float32).tobytes(),
                None if t.w is None else np.ascontiguousarray(t.w, np.float32).tobytes(),
            ),
        )

    # -- reads ---------------------------------------------------------------------------

    async def _read(self, name: str, fn: Callable[[Any, Row], Awaitable[T]]) -> T:
        """Run `fn` in a read-only snapshot; again if a rebuild swapped the table away."""
        import psycopg

        pool = self.need_pool()
        for attempt in range(3):
            try:
                with self.errors():
                    async with pool.connection() as conn, conn.transaction():
                        await conn.execute(
                            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                        )
                        return await fn(conn, await self.row(conn, name))
            except psycopg.errors.UndefinedTable:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def names(self) -> list[str]:
        pool = self.need_pool()
        with self.errors():
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT name FROM simsvc_collections ORDER BY name")
                return [r[0] for r in await cur.fetchall()]

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
            white = await self.whitening(conn, row.id, row.whitening)
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

    async def get(self, name: str, doc_id: str) -> Document | None:
        async def read(conn: Any, row: Row) -> Document | None:
            cur = await conn.execute(
                q("SELECT text, metadata FROM {t} WHERE id = %s", t=row.tbl), (doc_id,)
            )
            found = await cur.fetchone()
            return None if found is None else Document(doc_id, found[0], found[1])

        return await self._read(name, read)

    async def search(self, name: str, raw: FloatArray, k: int, where: Filter | None) -> list[Hit]:
        started = time.perf_counter()
        kind = "flat"

        async def read(conn: Any, row: Row) -> list[Hit]:
            nonlocal kind
            kind = row.spec.kind
            white = await self.whitening(conn, row.id, row.whitening)
            query = embed(white, row.dims, raw)[0]
            params = row.spec.params
            approximate = row.spec.kind == "hnsw" or (row.spec.kind == "ivf" and row.trained_on)
            if row.spec.kind == "hnsw":
                await self.set_local(conn, "hnsw.ef_search", max(params["ef_search"], k))
                await self.set_local(conn, "hnsw.iterative_scan", "relaxed_order")
            elif approximate:
                lists = ivf_lists(row.spec, row.trained_on)
                await self.set_local(conn, "ivfflat.probes", min(params["nprobe"], lists))
                await self.set_local(conn, "ivfflat.iterative_scan", "relaxed_order")
            hits = await nearest(conn, row.tbl, query, k, where)
            if approximate and len(hits) < min(k, row.count):
                # The approximate scan ran dry (a selective filter): scan exactly.
                await self.set_local(conn, "enable_indexscan", "off")
                hits = await nearest(conn, row.tbl, query, k, where)
            return hits

        try:
            return await self._read(name, read)
        finally:
            self.observer.searched(kind, time.perf_counter() - started)

    async def lexical(self, name: str, query: str, k: int, where: Filter | None) -> list[Hit]:
        started = time.perf_counter()

        async def read(conn: Any, row: Row) -> list[Hit]:
            return await bm25(conn, row, query, k, where)

        try:
            return await self._read(name, read)
        finally:
            self.observer.searched("lexical", time.perf_counter() - started)

    # -- writes --------------------------------------------------------------------------

    async def create(self, name: str, spec: CollectionSpec) -> bool:
        pool = self.need_pool()
        with self.errors():
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
                await self.insert_whitening(conn, cid, WhiteningState(spec.whitening, 0, source))
                if spec.index.kind == "hnsw":
                    await self._rebuilder.create_index(conn, tbl, spec.index, 0)
        log.info("collection %s created (%s, %d dims)", name, spec.index.kind, spec.dims)
        return True

    async def drop(self, name: str, *, if_empty: bool = False) -> bool:
        pool = self.need_pool()
        with self.errors():
            async with pool.connection() as conn, conn.transaction():
                ms = str(round(self.options.maintenance_timeout_s * 1000))
                await self.set_local(conn, "statement_timeout", ms)
                row = await self.row(conn, name)
                # The exclusive lock first, the row after: a writer holds its shared lock
                # and takes the row at commit, so the other order could deadlock.
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (row.id,))
                row = await self.row(conn, name, "FOR UPDATE")
                if if_empty and row.count:
                    return False
                await conn.execute("DELETE FROM simsvc_collections WHERE id = %s", (row.id,))
                await conn.execute(q("DROP TABLE IF EXISTS {t}", t=row.tbl))
        self.observer.forget(name)
        log.info("collection %s deleted", name)
        return True

    async def begin(self, name: str) -> StoreWriter:
        pool = self.need_pool()
        with self.errors():
            conn = await pool.getconn()
        try:
            with self.errors():
                await conn.execute("BEGIN")
                row = await self.row(conn, name)
                await conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (row.id,))
                row = await self.row(conn, name)  # as of now: a rebuild may have just ended
                white = await self.whitening(conn, row.id, row.whitening)
        except BaseException:
            await self.release(conn, rollback=True)
            raise
        return PostgresWriter(self, conn, row, white)

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
        await self._rebuilder.rebuild(
            name, "reconfigure", spec=index, dims=dims, analyzer=analyzer, search=search
        )

    async def refit(self, name: str, fitter: WhiteningFitter) -> None:
        await self._rebuilder.rebuild(name, "refit", fitter=fitter)
