"""Rebuilds of the PostgreSQL store: index changes, whitening refits, new dims, a new
lexical analyser, ivf training, and search defaults.

Each runs in one transaction under the collection's exclusive advisory lock (writers wait;
readers never do). A new whitening or new dims build the next table generation aside (rows
copied with their whitened vectors made again from the raw ones) and the catalog's pointer
moves to it at commit, so every replica switches at once; the old table is dropped in the
same transaction. An index change builds the new index before dropping the old one, so
searches keep an index meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from service.errors import ConflictError
from service.runtime.index import IndexSpec, ivf_lists, ivf_min_training
from service.runtime.lexical import term_counts
from service.runtime.store.base import (
    CollectionObserver,
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
from service.runtime.store.postgres_pool import PostgresPool
from service.runtime.store.postgres_schema import (
    Row,
    create_docs_table,
    create_vector_index,
    docs_table,
    drop_tables,
    fill_lexical_tables,
    jsonb,
    q,
    vector_index_prefix,
)
from service.runtime.store.postgres_writer import COPY_COLUMNS, COPY_TYPES
from service.runtime.types import FloatArray

log = logging.getLogger("simsvc.collections")


def index_changed(old: IndexSpec, new: IndexSpec) -> bool:
    """Whether the index must be built again (query-time parameters need not)."""
    if old.kind != new.kind:
        return True
    build = {"hnsw": ("m", "ef_construction"), "ivf": ("nlist",), "flat": ()}[new.kind]
    return any(old.params[p] != new.params[p] for p in build)


class Rebuilder:
    """The store's rebuilds; it borrows the store's pool and whitening cache."""

    def __init__(
        self, pool: PostgresPool, whitenings: Whitenings, observer: CollectionObserver
    ) -> None:
        self.pool = pool
        self.options = pool.options
        self.whitenings = whitenings
        self.observer = observer

    async def rebuild(
        self,
        name: str,
        reason: str,
        *,
        spec: IndexSpec | None = None,
        dims: int | None = None,
        fitter: WhiteningFitter | None = None,
        analyzer: str | None = None,
        search: Mapping[str, Any] | None = None,
        force_index: bool = False,
    ) -> None:
        """Change whatever is asked in one transaction, writes held off meanwhile."""
        pool = self.pool.need_pool()
        started = time.perf_counter()
        with self.pool.errors():
            async with pool.connection() as conn, conn.transaction():
                await set_local(conn, "statement_timeout", self.options.maintenance_ms())
                row = await catalog_row(conn, name)
                # The exclusive lock first, the row after: a writer holds its shared lock
                # and takes the row at commit, so the other order could deadlock.
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (row.id,))
                row = await catalog_row(conn, name, "FOR UPDATE")
                new_spec, new_dims = spec or row.spec, dims or row.dims
                white = await self.whitenings.get(conn, row.id, row.whitening)
                if fitter is not None:
                    white = await self._fit(conn, row, fitter, new_dims)
                tbl, gen, trained = row.tbl, row.generation, row.trained_on
                if fitter is not None or new_dims != row.dims:
                    gen = row.generation + 1
                    tbl = docs_table(row.id, gen)
                    await conn.execute(create_docs_table(tbl, new_dims))
                    await self._copy_rewhitened(conn, row.tbl, tbl, white, new_dims)
                    trained = await self.create_index(conn, tbl, new_spec, row.count)
                    await conn.execute(fill_lexical_tables(tbl))
                    await conn.execute(drop_tables(row.tbl))
                elif force_index or index_changed(row.spec, new_spec):
                    old = await self._vector_indexes(conn, tbl)
                    trained = await self.create_index(conn, tbl, new_spec, row.count)
                    for index in old:
                        await conn.execute(q("DROP INDEX {i}", i=index))
                lex_total = row.lex_total
                if analyzer is not None and analyzer != row.analyzer:
                    lex_total = await self._reanalyse(conn, tbl, analyzer)
                    await conn.execute(fill_lexical_tables(tbl))
                await conn.execute(
                    "UPDATE simsvc_collections SET tbl = %s, generation = %s, kind = %s, "
                    "params = %s, dims = %s, whitening = %s, trained_on = %s, analyzer = %s, "
                    "lex_total = %s, search = %s, seq = seq + 1 WHERE id = %s",
                    (
                        tbl,
                        gen,
                        new_spec.kind,
                        jsonb(dict(new_spec.params)),
                        new_dims,
                        white.version,
                        trained,
                        analyzer or row.analyzer,
                        lex_total,
                        jsonb(dict(search) if search is not None else row.search),
                        row.id,
                    ),
                )
        seconds = time.perf_counter() - started
        self.observer.rebuilt(reason, seconds)
        log.info("collection %s: rebuilt (%s) in %.2fs", name, reason, seconds)

    async def maintain(self, name: str, count: int) -> None:
        """After a write: train (or retrain) an ivf index once the collection is big enough.

        The write is durable already, so a failure is logged, not answered."""
        try:
            pool = self.pool.need_pool()
            with self.pool.errors():
                async with pool.connection() as conn:
                    row = await catalog_row(conn, name)
            if row.spec.kind != "ivf":
                return
            need = ivf_min_training(row.spec, self.options.ivf_min_documents)
            if count >= max(need, self.options.ivf_retrain_growth * row.trained_on):
                await self.rebuild(name, "train", spec=row.spec, force_index=True)
        except Exception as exc:  # noqa: BLE001 - the write stands; the next one retries
            log.error("collection %s: ivf training failed: %s", name, exc)

    async def create_index(self, conn: Any, tbl: str, spec: IndexSpec, count: int) -> int:
        """The spec's vector index on `tbl` (none for flat, nor for a too-small ivf); the
        number of documents an ivf index was trained on."""
        name = f"{vector_index_prefix(tbl)}_{uuid.uuid4().hex[:8]}"
        if spec.kind == "flat":
            return 0
        if spec.kind == "ivf":
            if count < ivf_min_training(spec, self.options.ivf_min_documents):
                return 0
            lists = ivf_lists(spec, count)
            await conn.execute(create_vector_index(tbl, name, "ivf", dict(spec.params), lists))
            return count
        await conn.execute(create_vector_index(tbl, name, "hnsw", dict(spec.params), 0))
        return 0

    @staticmethod
    async def _vector_indexes(conn: Any, tbl: str) -> list[str]:
        cur = await conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexname LIKE %s",
            (tbl, vector_index_prefix(tbl) + "%"),
        )
        return [r[0] for r in await cur.fetchall()]

    async def _fit(self, conn: Any, row: Row, fitter: WhiteningFitter, dims: int) -> WhiteningState:
        """A new whitening version from the fitter, checked and stored."""
        cur = await conn.execute(
            "SELECT max(version) FROM simsvc_whitenings WHERE collection = %s", (row.id,)
        )
        version = int((await cur.fetchone())[0]) + 1
        original = await self.whitenings.get(conn, row.id, 0)
        white = await asyncio.to_thread(
            fitter, self._raw_chunks(row.tbl), original.transform, version
        )
        if dims > white.transform.dims_out:
            raise ConflictError(
                f"collection {row.name!r} has {dims} dims; the {white.source} whitening "
                f"yields {white.transform.dims_out}: lower dims first"
            )
        await insert_whitening(conn, row.id, white)
        return white

    async def _copy_rewhitened(
        self, conn: Any, old: str, new: str, white: WhiteningState, dims: int
    ) -> None:
        """Every row of `old` into `new`, its whitened vector made again from the raw one."""
        cursor_name = f"simsvc_copy_{uuid.uuid4().hex[:8]}"
        async with conn.cursor(name=cursor_name) as src:
            await src.execute(q(f"SELECT {COPY_COLUMNS} FROM {{t}}", t=old))
            while rows := await src.fetchmany(self.options.copy_chunk):
                raw = np.frombuffer(b"".join(r[3] for r in rows), dtype=np.float32)
                emb = embed(white, dims, raw.reshape(len(rows), -1))
                async with (
                    conn.cursor() as dst,
                    dst.copy(
                        q(f"COPY {{t}} ({COPY_COLUMNS}) FROM STDIN (FORMAT BINARY)", t=new)
                    ) as copy,
                ):
                    copy.set_types(COPY_TYPES)
                    for i, r in enumerate(rows):
                        await copy.write_row(
                            (r[0], r[1], jsonb(r[2]), r[3], emb[i], jsonb(r[5]), r[6])
                        )

    async def _reanalyse(self, conn: Any, tbl: str, analyzer: str) -> int:
        """Every row's terms made again with another analyser; the new lexical size."""
        total = 0
        cursor_name = f"simsvc_lex_{uuid.uuid4().hex[:8]}"
        async with conn.cursor(name=cursor_name) as src:
            await src.execute(q("SELECT id, text FROM {t}", t=tbl))
            while rows := await src.fetchmany(self.options.copy_chunk):
                counted = [(doc_id, *term_counts(analyzer, text)) for doc_id, text in rows]
                total += sum(n for _, _, n in counted)
                async with conn.cursor() as dst:
                    await dst.executemany(
                        q("UPDATE {t} SET tf = %s, lex_len = %s WHERE id = %s", t=tbl),
                        [(jsonb(tf), n, doc_id) for doc_id, tf, n in counted],
                    )
        return total

    def _raw_chunks(self, tbl: str) -> Callable[[], Iterator[FloatArray]]:
        """Raw vectors of a table, chunk by chunk, on a connection of its own (the fitter
        runs in a worker thread; the rebuild's lock keeps the table still meanwhile)."""
        url, chunk = self.options.url, self.options.copy_chunk
        timeout = self.options.connect_timeout()

        def chunks() -> Iterator[FloatArray]:
            import psycopg

            with (
                psycopg.connect(url, connect_timeout=timeout) as conn,
                conn.cursor(name="simsvc_fit") as cur,
            ):
                cur.execute(q("SELECT raw FROM {t}", t=tbl))
                while rows := cur.fetchmany(chunk):
                    flat = np.frombuffer(b"".join(r[0] for r in rows), dtype=np.float32)
                    yield flat.reshape(len(rows), -1)

        return chunks
