"""The PostgreSQL store: collections in a database that stateless replicas share.

Documents, metadata (jsonb, GIN-indexed for filters), raw pooled vectors (bytea, so refits
and index changes never re-encode) and whitened vectors (pgvector, HNSW or ivfflat with
inner product) live in the database; each replica holds only connections and a cache of
whitening transforms keyed by (collection id, version), which never change once written.
So a write acknowledged by one replica is visible to every other at once, and there is
nothing to invalidate.

Concurrency: writers of a collection hold a shared advisory lock on it for their
transaction, rebuilds (index changes, refits, drops) an exclusive one, so a rebuild never
misses a write; readers never wait (MVCC). A refit builds the next generation's table aside
and swaps the catalog's pointer, whitening version and dims in one transaction.

The database going away: every call answers 503 (`store_unavailable`), `/ready` says why
(a background probe), and the connection pool reconnects by itself when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson

from service.errors import ConflictError, NotFoundError, ValidationError
from service.runtime.index import IndexSpec, ivf_lists, ivf_min_training
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
from service.runtime.types import FloatArray
from service.runtime.whitening import Whitening

log = logging.getLogger("simsvc.collections")
T = TypeVar("T")

STAGING = "simsvc_staging"
_COLUMNS = "name, id, tbl, generation, model, kind, params, dims, whitening, trained_on, seq, count"


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


@dataclass(frozen=True)
class _Row:
    """One catalog row: a collection as every replica sees it."""

    name: str
    id: int
    tbl: str
    generation: int
    model: ModelInfo
    spec: IndexSpec
    dims: int
    whitening: int
    trained_on: int
    seq: int
    count: int

    @classmethod
    def parse(cls, r: Sequence[Any]) -> _Row:
        name, cid, tbl, gen, model, kind, params, dims, white, trained, seq, count = r
        return cls(
            name,
            int(cid),
            tbl,
            int(gen),
            ModelInfo(**model),
            IndexSpec(kind, {k: int(v) for k, v in params.items()}),
            int(dims),
            int(white),
            int(trained),
            int(seq),
            int(count),
        )


def _jsonb(value: Any) -> Any:
    from psycopg.types.json import Jsonb

    return Jsonb(value, dumps=lambda v: orjson.dumps(v).decode())


def _ident(name: str) -> Any:
    from psycopg import sql

    return sql.Identifier(name)


def _q(template: str, **idents: str) -> Any:
    """SQL with identifiers (table and index names) quoted into place."""
    from psycopg import sql

    return sql.SQL(template).format(**{k: sql.Identifier(v) for k, v in idents.items()})


class PostgresWriter(StoreWriter):
    """One write transaction on one connection, under the collection's shared lock."""

    def __init__(self, store: PostgresStore, conn: Any, row: _Row, white: WhiteningState) -> None:
        self._store = store
        self._conn = conn
        self._row = row
        self._white = white
        self._ids: set[str] = set()
        self._changes = 0
        self._delta = 0
        self._done = False

    async def upsert(self, docs: Sequence[Document], raw: FloatArray) -> None:
        for doc in docs:
            if doc.id in self._ids:
                raise ValidationError(f"document id {doc.id!r} appears twice in one request")
            self._ids.add(doc.id)
        emb = embed(self._white, self._row.dims, raw)
        raw32 = np.ascontiguousarray(raw, dtype=np.float32)
        with self._store.errors():
            async with self._conn.cursor() as cur:
                async with cur.copy(
                    f"COPY {STAGING} (id, text, metadata, raw, emb) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["text", "text", "jsonb", "bytea", "vector"])
                    for i, doc in enumerate(docs):
                        await copy.write_row(
                            (doc.id, doc.text, _jsonb(doc.metadata), raw32[i].tobytes(), emb[i])
                        )
                await cur.execute(
                    _q(
                        "WITH up AS (INSERT INTO {t} (id, text, metadata, raw, emb) "
                        "SELECT id, text, metadata, raw, emb FROM simsvc_staging "
                        "ON CONFLICT (id) DO UPDATE SET text = EXCLUDED.text, "
                        "metadata = EXCLUDED.metadata, raw = EXCLUDED.raw, emb = EXCLUDED.emb "
                        "RETURNING (xmax = 0) AS inserted) "
                        "SELECT count(*) FILTER (WHERE inserted) FROM up",
                        t=self._row.tbl,
                    )
                )
                inserted = (await cur.fetchone())[0]
                await cur.execute(f"DELETE FROM {STAGING}")
        self._delta += int(inserted)
        self._changes += len(docs)

    async def delete(self, doc_id: str) -> bool:
        with self._store.errors():
            cur = await self._conn.execute(
                _q("DELETE FROM {t} WHERE id = %s", t=self._row.tbl), (doc_id,)
            )
        found = bool(cur.rowcount > 0)
        self._delta -= int(found)
        self._changes += int(found)
        return found

    async def commit(self) -> int:
        try:
            with self._store.errors():
                cur = await self._conn.execute(
                    "UPDATE simsvc_collections SET seq = seq + %s, count = count + %s "
                    "WHERE id = %s RETURNING count",
                    (self._changes, self._delta, self._row.id),
                )
                count = int((await cur.fetchone())[0])
                await self._conn.execute("COMMIT")
        except BaseException:
            self.abort()
            raise
        self._done = True
        await self._store.release(self._conn)
        self._store.observer.documents(self._row.name, count)
        await self._store.maintain(self._row.name, count)
        return count

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._store.spawn(self._store.release(self._conn, rollback=True))


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
        self._ready = asyncio.Event()

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
        self._ready.set()
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
            "raw bytea, emb vector) ON COMMIT DELETE ROWS"
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

    def _need_pool(self) -> Any:
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

    # -- reads ---------------------------------------------------------------------------

    async def _row(self, conn: Any, name: str, lock: str = "") -> _Row:
        cur = await conn.execute(
            f"SELECT {_COLUMNS} FROM simsvc_collections WHERE name = %s {lock}", (name,)
        )
        row = await cur.fetchone()
        if row is None:
            raise NotFoundError(f"no collection named {name!r}")
        return _Row.parse(row)

    async def _whitening(self, conn: Any, cid: int, version: int) -> WhiteningState:
        key = (cid, version)
        state = self._whitenings.get(key)
        if state is None:
            cur = await conn.execute(
                "SELECT source, documents, dims_in, dims_out, mu, w FROM simsvc_whitenings "
                "WHERE collection = %s AND version = %s",
                key,
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFoundError(f"collection {cid} has no whitening version {version}")
            source, documents, dims_in, dims_out, mu, w = row
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

    async def _read(self, name: str, fn: Callable[[Any, _Row], Awaitable[T]]) -> T:
        """Run `fn` in a read-only snapshot; once more if a rebuild swapped the table away."""
        import psycopg

        pool = self._need_pool()
        for attempt in range(3):
            try:
                with self.errors():
                    async with pool.connection() as conn, conn.transaction():
                        await conn.execute(
                            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                        )
                        return await fn(conn, await self._row(conn, name))
            except psycopg.errors.UndefinedTable:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def names(self) -> list[str]:
        pool = self._need_pool()
        with self.errors():
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT name FROM simsvc_collections ORDER BY name")
                return [r[0] for r in await cur.fetchall()]

    async def model(self, name: str) -> ModelInfo:
        async def read(conn: Any, row: _Row) -> ModelInfo:
            return row.model

        return await self._read(name, read)

    async def index_spec(self, name: str) -> tuple[IndexSpec, int]:
        async def read(conn: Any, row: _Row) -> tuple[IndexSpec, int]:
            return row.spec, row.dims

        return await self._read(name, read)

    async def info(self, name: str) -> dict[str, Any]:
        async def read(conn: Any, row: _Row) -> dict[str, Any]:
            white = await self._whitening(conn, row.id, row.whitening)
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
                "seq": row.seq,
            }

        return await self._read(name, read)

    async def ids(self, name: str) -> set[str]:
        """Every document id of a collection (bulk indexing resumes by them)."""

        async def read(conn: Any, row: _Row) -> set[str]:
            cur = await conn.execute(_q("SELECT id FROM {t}", t=row.tbl))
            return {r[0] for r in await cur.fetchall()}

        return await self._read(name, read)

    async def get(self, name: str, doc_id: str) -> Document | None:
        async def read(conn: Any, row: _Row) -> Document | None:
            cur = await conn.execute(
                _q("SELECT text, metadata FROM {t} WHERE id = %s", t=row.tbl), (doc_id,)
            )
            found = await cur.fetchone()
            return None if found is None else Document(doc_id, found[0], found[1])

        return await self._read(name, read)

    async def search(self, name: str, raw: FloatArray, k: int, where: Filter | None) -> list[Hit]:
        started = time.perf_counter()
        kind = "flat"

        async def read(conn: Any, row: _Row) -> list[Hit]:
            nonlocal kind
            kind = row.spec.kind
            white = await self._whitening(conn, row.id, row.whitening)
            query = embed(white, row.dims, raw)[0]
            params = row.spec.params
            approximate = row.spec.kind == "hnsw" or (row.spec.kind == "ivf" and row.trained_on)
            if row.spec.kind == "hnsw":
                await self._set(conn, "hnsw.ef_search", max(params["ef_search"], k))
                await self._set(conn, "hnsw.iterative_scan", "relaxed_order")
            elif approximate:
                lists = ivf_lists(row.spec, row.trained_on)
                await self._set(conn, "ivfflat.probes", min(params["nprobe"], lists))
                await self._set(conn, "ivfflat.iterative_scan", "relaxed_order")
            hits = await self._nearest(conn, row.tbl, query, k, where)
            if approximate and len(hits) < min(k, row.count):
                # The approximate scan ran dry (a selective filter): scan exactly.
                await self._set(conn, "enable_indexscan", "off")
                hits = await self._nearest(conn, row.tbl, query, k, where)
            return hits

        try:
            return await self._read(name, read)
        finally:
            self.observer.searched(kind, time.perf_counter() - started)

    @staticmethod
    async def _set(conn: Any, key: str, value: object) -> None:
        await conn.execute("SELECT set_config(%s, %s, true)", (key, str(value)))

    @staticmethod
    async def _nearest(
        conn: Any, tbl: str, query: FloatArray, k: int, where: Filter | None
    ) -> list[Hit]:
        cond = "WHERE metadata @> %(f)s" if where else ""
        cur = await conn.execute(
            _q(
                f"SELECT id, text, metadata, -(emb <#> %(q)s) FROM {{t}} {cond} "
                "ORDER BY emb <#> %(q)s LIMIT %(k)s",
                t=tbl,
            ),
            {"q": query, "k": k, "f": _jsonb(dict(where or {}))},
        )
        rows = await cur.fetchall()
        hits = [Hit(Document(r[0], r[1], r[2]), float(r[3])) for r in rows]
        hits.sort(key=lambda h: -h.score)  # iterative scans may return them slightly out of order
        return hits

    # -- writes --------------------------------------------------------------------------

    async def create(self, name: str, spec: CollectionSpec) -> bool:
        from service.runtime.store.postgres_schema import create_docs_table, docs_table

        pool = self._need_pool()
        with self.errors():
            async with pool.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    "INSERT INTO simsvc_collections (name, tbl, model, kind, params, dims) "
                    "VALUES (%s, '', %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING RETURNING id",
                    (
                        name,
                        _jsonb(
                            {
                                "model": spec.model.model,
                                "pooling": spec.model.pooling,
                                "raw_dims": spec.model.raw_dims,
                            }
                        ),
                        spec.index.kind,
                        _jsonb(dict(spec.index.params)),
                        spec.dims,
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
                await self._insert_whitening(conn, cid, WhiteningState(spec.whitening, 0, source))
                if spec.index.kind == "hnsw":
                    await self._create_index(conn, tbl, spec.index, 0)
        log.info("collection %s created (%s, %d dims)", name, spec.index.kind, spec.dims)
        return True

    @staticmethod
    async def _insert_whitening(conn: Any, cid: int, state: WhiteningState) -> None:
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

    async def drop(self, name: str, *, if_empty: bool = False) -> bool:
        pool = self._need_pool()
        with self.errors():
            async with pool.connection() as conn, conn.transaction():
                await self._set(conn, "statement_timeout", self._maintenance_ms())
                row = await self._row(conn, name)
                # The exclusive lock first, the row after: a writer holds its shared lock
                # and takes the row at commit, so the other order could deadlock.
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (row.id,))
                row = await self._row(conn, name, "FOR UPDATE")
                if if_empty and row.count:
                    return False
                await conn.execute("DELETE FROM simsvc_collections WHERE id = %s", (row.id,))
                await conn.execute(_q("DROP TABLE IF EXISTS {t}", t=row.tbl))
        self.observer.forget(name)
        log.info("collection %s deleted", name)
        return True

    async def begin(self, name: str) -> StoreWriter:
        pool = self._need_pool()
        with self.errors():
            conn = await pool.getconn()
        try:
            with self.errors():
                await conn.execute("BEGIN")
                row = await self._row(conn, name)
                await conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (row.id,))
                row = await self._row(conn, name)  # as of now: a rebuild may have just ended
                white = await self._whitening(conn, row.id, row.whitening)
        except BaseException:
            await self.release(conn, rollback=True)
            raise
        return PostgresWriter(self, conn, row, white)

    # -- rebuilds ------------------------------------------------------------------------

    def _maintenance_ms(self) -> str:
        return str(round(self.options.maintenance_timeout_s * 1000))

    async def maintain(self, name: str, count: int) -> None:
        """After a write: train (or retrain) an ivf index once the collection is big enough.

        The write is durable already, so a failure is logged, not answered."""
        try:
            spec, _ = await self.index_spec(name)
            if spec.kind != "ivf":
                return
            info = await self.info(name)
            trained = int(info["index"]["trained_on"])
            need = ivf_min_training(spec, self.options.ivf_min_documents)
            if count >= max(need, self.options.ivf_retrain_growth * trained):
                await self._rebuild(name, "train", spec=spec, force_index=True)
        except Exception as exc:  # noqa: BLE001 - the write stands; the next one retries
            log.error("collection %s: ivf training failed: %s", name, exc)

    async def configure(
        self, name: str, index: IndexSpec | None = None, dims: int | None = None
    ) -> None:
        await self._rebuild(name, "reconfigure", spec=index, dims=dims)

    async def refit(self, name: str, fitter: WhiteningFitter) -> None:
        await self._rebuild(name, "refit", fitter=fitter)

    async def _create_index(self, conn: Any, tbl: str, spec: IndexSpec, count: int) -> int:
        """The spec's vector index on `tbl` (none for flat, nor for a too-small ivf); the
        number of documents an ivf index was trained on."""
        from service.runtime.store.postgres_schema import create_vector_index

        if spec.kind == "flat":
            return 0
        if spec.kind == "ivf":
            if count < ivf_min_training(spec, self.options.ivf_min_documents):
                return 0
            await conn.execute(
                create_vector_index(tbl, "ivf", dict(spec.params), ivf_lists(spec, count))
            )
            return count
        await conn.execute(create_vector_index(tbl, "hnsw", dict(spec.params), 0))
        return 0

    async def _rebuild(
        self,
        name: str,
        reason: str,
        *,
        spec: IndexSpec | None = None,
        dims: int | None = None,
        fitter: WhiteningFitter | None = None,
        force_index: bool = False,
    ) -> None:
        """Change the index, the dims or the whitening in one transaction, writes held off."""
        from service.runtime.store.postgres_schema import (
            create_docs_table,
            docs_table,
            drop_vector_index,
        )

        pool = self._need_pool()
        started = time.perf_counter()
        with self.errors():
            async with pool.connection() as conn, conn.transaction():
                await self._set(conn, "statement_timeout", self._maintenance_ms())
                row = await self._row(conn, name)
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (row.id,))
                row = await self._row(conn, name, "FOR UPDATE")
                new_spec, new_dims = spec or row.spec, dims or row.dims
                white = await self._whitening(conn, row.id, row.whitening)
                if fitter is not None:
                    cur = await conn.execute(
                        "SELECT max(version) FROM simsvc_whitenings WHERE collection = %s",
                        (row.id,),
                    )
                    version = int((await cur.fetchone())[0]) + 1
                    original = await self._whitening(conn, row.id, 0)
                    white = await asyncio.to_thread(
                        fitter, self._raw_chunks(row.tbl), original.transform, version
                    )
                    if new_dims > white.transform.dims_out:
                        raise ConflictError(
                            f"collection {name!r} has {new_dims} dims; the {white.source} "
                            f"whitening yields {white.transform.dims_out}: lower dims first"
                        )
                    await self._insert_whitening(conn, row.id, white)
                    self._whitenings[(row.id, version)] = white
                tbl, gen, trained = row.tbl, row.generation, row.trained_on
                if fitter is not None or new_dims != row.dims:
                    gen = row.generation + 1
                    tbl = docs_table(row.id, gen)
                    await conn.execute(create_docs_table(tbl, new_dims))
                    await self._copy_rewhitened(conn, row.tbl, tbl, white, new_dims)
                    trained = await self._create_index(conn, tbl, new_spec, row.count)
                    await conn.execute(_q("DROP TABLE {t}", t=row.tbl))
                elif force_index or self._index_changed(row.spec, new_spec):
                    await conn.execute(drop_vector_index(tbl))
                    trained = await self._create_index(conn, tbl, new_spec, row.count)
                await conn.execute(
                    "UPDATE simsvc_collections SET tbl = %s, generation = %s, kind = %s, "
                    "params = %s, dims = %s, whitening = %s, trained_on = %s, seq = seq + 1 "
                    "WHERE id = %s",
                    (
                        tbl,
                        gen,
                        new_spec.kind,
                        _jsonb(dict(new_spec.params)),
                        new_dims,
                        white.version,
                        trained,
                        row.id,
                    ),
                )
        seconds = time.perf_counter() - started
        self.observer.rebuilt(reason, seconds)
        log.info("collection %s: rebuilt (%s) in %.2fs", name, reason, seconds)

    @staticmethod
    def _index_changed(old: IndexSpec, new: IndexSpec) -> bool:
        """Whether the index must be built again (query-time parameters need not)."""
        if old.kind != new.kind:
            return True
        build = {"hnsw": ("m", "ef_construction"), "ivf": ("nlist",), "flat": ()}[new.kind]
        return any(old.params[p] != new.params[p] for p in build)

    async def _copy_rewhitened(
        self, conn: Any, old: str, new: str, white: WhiteningState, dims: int
    ) -> None:
        """Every row of `old` into `new`, its whitened vector made again from the raw one."""
        chunk = self.options.copy_chunk
        cursor_name = f"simsvc_copy_{uuid.uuid4().hex[:8]}"
        async with conn.cursor(name=cursor_name) as src:
            await src.execute(_q("SELECT id, text, metadata, raw FROM {t}", t=old))
            while rows := await src.fetchmany(chunk):
                raw = np.frombuffer(b"".join(r[3] for r in rows), dtype=np.float32)
                emb = embed(white, dims, raw.reshape(len(rows), -1))
                async with (
                    conn.cursor() as dst,
                    dst.copy(
                        _q(
                            "COPY {t} (id, text, metadata, raw, emb) FROM STDIN (FORMAT BINARY)",
                            t=new,
                        )
                    ) as copy,
                ):
                    copy.set_types(["text", "text", "jsonb", "bytea", "vector"])
                    for i, r in enumerate(rows):
                        await copy.write_row((r[0], r[1], _jsonb(r[2]), r[3], emb[i]))

    def _raw_chunks(self, tbl: str) -> Callable[[], Iterator[FloatArray]]:
        """Raw vectors of a table, chunk by chunk, on a connection of its own (the fitter
        runs in a worker thread; the rebuild's lock keeps the table still meanwhile)."""
        url, chunk = self.options.url, self.options.copy_chunk

        def chunks() -> Iterator[FloatArray]:
            import psycopg

            with (
                psycopg.connect(url, connect_timeout=self._connect_timeout()) as conn,
                conn.cursor(name="simsvc_fit") as cur,
            ):
                cur.execute(_q("SELECT raw FROM {t}", t=tbl))
                while rows := cur.fetchmany(chunk):
                    flat = np.frombuffer(b"".join(r[0] for r in rows), dtype=np.float32)
                    yield flat.reshape(len(rows), -1)

        return chunks
