"""A write transaction of the PostgreSQL store: COPY into a staging table, then upsert.

The writer holds one pooled connection and the collection's shared advisory lock for its
whole transaction (rebuilds take the exclusive one), so the table it writes cannot be
swapped away under it. Rows it replaces or deletes are locked before they are read (an
upsert inserts and locks in one pass, in id order), so the count and lexical size it adds
to the catalog at commit are exact even with concurrent writers. Its postings change with
the rows; the document frequencies they change are added at commit, term rows taken in
term order and the catalog row last, so concurrent writers never deadlock there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from psycopg import sql

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
from service.runtime.store.postgres_schema import (
    STAGING,
    Row,
    jsonb,
    postings_table,
    q,
    terms_table,
)
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
        self._df: dict[str, int] = {}
        self._done = False

    async def _replaced(
        self, cur: Any, ids: Sequence[str]
    ) -> dict[str, tuple[dict[str, int], int]]:
        """The term counts and length of these rows (locked by this transaction already),
        which leave the lexical index with them."""
        await cur.execute(
            q("SELECT id, tf, lex_len FROM {t} WHERE id = ANY(%s)", t=self._row.tbl),
            (list(ids),),
        )
        return {r[0]: (dict(r[1]), int(r[2])) for r in await cur.fetchall()}

    async def upsert(self, docs: Sequence[Document], raw: FloatArray) -> None:
        for doc in docs:
            if doc.id in self._ids:
                raise ValidationError(f"document id {doc.id!r} appears twice in one request")
            self._ids.add(doc.id)
        emb = embed(self._white, self._row.dims, raw)
        raw32 = np.ascontiguousarray(raw, dtype=np.float32)
        lexical = [term_counts(self._row.analyzer, doc.text) for doc in docs]
        t = self._row.tbl
        ids = [doc.id for doc in docs]
        with self._pool.errors():
            async with self._conn.cursor() as cur:
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
                # One pass in id order: new ids inserted, existing rows locked (`WHERE
                # false` locks without updating; a row another writer is inserting is
                # waited for, then locked), so concurrent writers take rows in one order.
                await cur.execute(
                    q(
                        f"INSERT INTO {{t}} ({COPY_COLUMNS}) SELECT {COPY_COLUMNS} FROM {STAGING} "
                        "ORDER BY id ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id WHERE false "
                        "RETURNING id",
                        t=t,
                    )
                )
                inserted = {r[0] for r in await cur.fetchall()}
                old = await self._replaced(cur, [i for i in ids if i not in inserted])
                if old:
                    await cur.execute(
                        q(
                            "UPDATE {t} AS d SET text = s.text, metadata = s.metadata, "
                            "raw = s.raw, emb = s.emb, tf = s.tf, lex_len = s.lex_len "
                            f"FROM {STAGING} AS s WHERE d.id = s.id AND d.id = ANY(%s)",
                            t=t,
                        ),
                        (list(old),),
                    )
                await cur.execute(f"DELETE FROM {STAGING}")
                # Postings change only where the terms did (not on a metadata update).
                changed = [
                    (i, tf, n)
                    for i, (tf, n) in zip(ids, lexical, strict=True)
                    if i not in old or old[i][0] != tf
                ]
                await self._unpost(cur, [(i, old[i][0]) for i, _, _ in changed if i in old])
                await self._post(cur, changed)
        self._delta += len(docs) - len(old)
        self._lex_delta += sum(n for _, n in lexical) - sum(n for _, n in old.values())
        self._changes += len(docs)

    async def _unpost(self, cur: Any, docs: Sequence[tuple[str, dict[str, int]]]) -> None:
        """Remove these documents' postings (their rows are locked: no one else posts them)."""
        if not docs:
            return
        pairs = sorted((term, doc_id) for doc_id, tf in docs for term in tf)
        await cur.execute(
            q(
                "DELETE FROM {p} AS p USING unnest(%s::text[], %s::text[]) AS x (term, doc) "
                "WHERE p.term = x.term AND p.doc = x.doc",
                p=postings_table(self._row.tbl),
            ),
            ([p[0] for p in pairs], [p[1] for p in pairs]),
        )
        for term, _ in pairs:
            self._df[term] = self._df.get(term, 0) - 1

    async def _post(self, cur: Any, docs: Sequence[tuple[str, dict[str, int], int]]) -> None:
        """Add these documents' postings; their document frequencies count at commit."""
        if not docs:
            return
        rows = sorted((term, doc_id, n, dl) for doc_id, tf, dl in docs for term, n in tf.items())
        async with cur.copy(
            q("COPY {p} (term, doc, tf, dl) FROM STDIN (FORMAT BINARY)",
              p=postings_table(self._row.tbl))
        ) as copy:  # fmt: skip
            copy.set_types(["text", "text", "int4", "int4"])
            for row in rows:
                await copy.write_row(row)
        for term, *_ in rows:
            self._df[term] = self._df.get(term, 0) + 1

    async def delete(self, doc_id: str) -> bool:
        with self._pool.errors():
            async with self._conn.cursor() as cur:
                await cur.execute(
                    q("DELETE FROM {t} WHERE id = %s RETURNING tf, lex_len", t=self._row.tbl),
                    (doc_id,),
                )
                gone = await cur.fetchone()
                if gone is None:
                    return False
                await self._unpost(cur, [(doc_id, dict(gone[0]))])
        self._delta -= 1
        self._lex_delta -= int(gone[1])
        self._changes += 1
        return True

    async def _count_terms(self) -> None:
        """Apply the document frequencies this transaction changed: term rows locked in
        term order by every writer (no deadlock among them), each an atomic increment;
        terms no document holds any more leave."""
        changed = sorted((t, n) for t, n in self._df.items() if n)
        if not changed:
            return
        terms = sql.Identifier(terms_table(self._row.tbl))
        await self._conn.execute(
            sql.SQL(
                "INSERT INTO {s} AS s (term, df) SELECT * FROM unnest(%s::text[], %s::bigint[]) "
                "ORDER BY 1 ON CONFLICT (term) DO UPDATE SET df = s.df + excluded.df"
            ).format(s=terms),
            ([t for t, _ in changed], [n for _, n in changed]),
        )
        fewer = [t for t, n in changed if n < 0]
        if fewer:
            await self._conn.execute(
                sql.SQL("DELETE FROM {s} WHERE term = ANY(%s) AND df <= 0").format(s=terms),
                (fewer,),
            )

    async def commit(self) -> int:
        try:
            with self._pool.errors():
                await self._count_terms()
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
