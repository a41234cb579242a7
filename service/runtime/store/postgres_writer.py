"""A write transaction of the PostgreSQL store: COPY into a staging table, then upsert.

The writer holds one pooled connection and the collection's shared advisory lock for its
whole transaction (rebuilds take the exclusive one), so the table it writes cannot be
swapped away under it. Rows it replaces or deletes are locked first, so the lexical size it
adds to the catalog at commit is exact even with concurrent writers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from service.errors import ValidationError
from service.runtime.lexical import term_counts
from service.runtime.store.base import (
    CollectionObserver,
    Document,
    StoreWriter,
    WhiteningState,
    embed,
)
from service.runtime.store.postgres_pool import PostgresPool
from service.runtime.store.postgres_schema import STAGING, Row, jsonb, q
from service.runtime.types import FloatArray

COPY_TYPES = ["text", "text", "jsonb", "bytea", "vector", "jsonb", "int4"]
COPY_COLUMNS = "id, text, metadata, raw, emb, tf, lex_len"


class PostgresWriter(StoreWriter):
    """One write transaction on one connection, under the collection's shared lock.

    `after_commit(name, count)` runs once the transaction is committed (the store's ivf
    training check); the write stands whatever it does."""

    def __init__(
        self,
        pool: PostgresPool,
        conn: Any,
        row: Row,
        white: WhiteningState,
        observer: CollectionObserver,
        after_commit: Callable[[str, int], Awaitable[None]],
    ) -> None:
        self._pool = pool
        self._observer = observer
        self._after_commit = after_commit
        self._conn = conn
        self._row = row
        self._white = white
        self._ids: set[str] = set()
        self._changes = 0
        self._delta = 0
        self._lex_delta = 0
        self._done = False

    async def upsert(self, docs: Sequence[Document], raw: FloatArray) -> None:
        for doc in docs:
            if doc.id in self._ids:
                raise ValidationError(f"document id {doc.id!r} appears twice in one request")
            self._ids.add(doc.id)
        emb = embed(self._white, self._row.dims, raw)
        raw32 = np.ascontiguousarray(raw, dtype=np.float32)
        lexical = [term_counts(self._row.analyzer, doc.text) for doc in docs]
        t = self._row.tbl
        with self._pool.errors():
            async with self._conn.cursor() as cur:
                # Lock the rows this replaces: their lexical sizes leave the total exactly.
                await cur.execute(
                    q("SELECT lex_len FROM {t} WHERE id = ANY(%s) FOR UPDATE", t=t),
                    ([d.id for d in docs],),
                )
                replaced = [int(r[0]) for r in await cur.fetchall()]
                async with cur.copy(
                    f"COPY {STAGING} ({COPY_COLUMNS}) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(COPY_TYPES)
                    for i, doc in enumerate(docs):
                        tf, lex_len = lexical[i]
                        await copy.write_row(
                            (doc.id, doc.text, jsonb(doc.metadata), raw32[i].tobytes(), emb[i],
                             jsonb(tf), lex_len)
                        )  # fmt: skip
                await cur.execute(
                    q(
                        f"INSERT INTO {{t}} ({COPY_COLUMNS}) SELECT {COPY_COLUMNS} FROM {STAGING} "
                        "ON CONFLICT (id) DO UPDATE SET text = EXCLUDED.text, "
                        "metadata = EXCLUDED.metadata, raw = EXCLUDED.raw, emb = EXCLUDED.emb, "
                        "tf = EXCLUDED.tf, lex_len = EXCLUDED.lex_len",
                        t=t,
                    )
                )
                await cur.execute(f"DELETE FROM {STAGING}")
        self._delta += len(docs) - len(replaced)
        self._lex_delta += sum(n for _, n in lexical) - sum(replaced)
        self._changes += len(docs)

    async def delete(self, doc_id: str) -> bool:
        with self._pool.errors():
            cur = await self._conn.execute(
                q("DELETE FROM {t} WHERE id = %s RETURNING lex_len", t=self._row.tbl), (doc_id,)
            )
            gone = await cur.fetchone()
        if gone is None:
            return False
        self._delta -= 1
        self._lex_delta -= int(gone[0])
        self._changes += 1
        return True

    async def commit(self) -> int:
        try:
            with self._pool.errors():
                cur = await self._conn.execute(
                    "UPDATE simsvc_collections SET seq = seq + %s, count = count + %s, "
                    "lex_total = lex_total + %s WHERE id = %s RETURNING count, lex_total",
                    (self._changes, self._delta, self._lex_delta, self._row.id),
                )
                count, lex_total = (int(v) for v in await cur.fetchone())
                await self._conn.execute("COMMIT")
        except BaseException:
            self.abort()
            raise
        self._done = True
        await self._pool.release(self._conn)
        self._observer.documents(self._row.name, count)
        self._observer.lexical_terms(self._row.name, lex_total)
        await self._after_commit(self._row.name, count)
        return count

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._pool.spawn(self._pool.release(self._conn, rollback=True))
