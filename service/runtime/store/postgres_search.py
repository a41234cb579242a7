"""The PostgreSQL store's two rankings, as SQL: nearest whitened vectors, and BM25.

BM25 here is FTS5's bm25() (the local store's ranking) written out: the same idf (floored at
1e-6), k1 1.2, b 0.75, document length in terms and the collection's average, so both stores
rank a collection's documents alike. It reads the collection's inverted index (postings and
document frequencies, `postgres_schema`), so a query costs its own terms' postings, not a
pass over the collection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import sql

from service.runtime.lexical import BM25_B, BM25_K1, terms
from service.runtime.store.base import Document, Filter, Hit
from service.runtime.store.postgres_schema import Row, jsonb, postings_table, q, terms_table
from service.runtime.types import FloatArray

MAX_QUERY_TERMS = 64
"""Distinct query terms ranked (the rest of a very long query is ignored)."""


def _hits(rows: Sequence[Sequence[Any]]) -> list[Hit]:
    hits = [Hit(Document(r[0], r[1], r[2]), float(r[3])) for r in rows]
    hits.sort(key=lambda h: -h.score)  # iterative index scans may return them slightly unsorted
    return hits


async def nearest(
    conn: Any, tbl: str, query: FloatArray, k: int, where: Filter | None
) -> list[Hit]:
    """The k rows whose whitened vectors have the largest inner product with `query`."""
    cond = "WHERE metadata @> %(f)s" if where else ""
    cur = await conn.execute(
        q(
            f"SELECT id, text, metadata, -(emb <#> %(q)s) FROM {{t}} {cond} "
            "ORDER BY emb <#> %(q)s LIMIT %(k)s",
            t=tbl,
        ),
        {"q": query, "k": k, "f": jsonb(dict(where or {}))},
    )
    return _hits(await cur.fetchall())


async def bm25(conn: Any, row: Row, query: str, k: int, where: Filter | None) -> list[Hit]:
    """The k best BM25 matches of the query's analysed terms among rows matching `where`.

    One statement: the query terms' document frequencies (the term statistics table, one
    index probe each), their postings (one index range each: tf and the document length
    ride in the index), summed per document; only the best k documents are read."""
    words = list(dict.fromkeys(terms(row.analyzer, query)))[:MAX_QUERY_TERMS]
    if not words or row.count == 0:
        return []
    join: sql.Composable = sql.SQL("")
    if where:
        join = sql.SQL("JOIN {t} AS d ON d.id = p.doc AND d.metadata @> %(f)s").format(
            t=sql.Identifier(row.tbl)
        )
    cur = await conn.execute(
        sql.SQL(
            """
            WITH q AS (
                SELECT s.term, CASE WHEN s.x > 0 THEN s.x ELSE 1e-6 END AS idf
                FROM (
                    SELECT term, ln((%(n)s - df + 0.5) / (df + 0.5)) AS x
                    FROM {terms} WHERE term = ANY(%(terms)s)
                ) AS s
            ), best AS (
                SELECT p.doc, sum(
                    q.idf * p.tf * {k1p} / (p.tf + {k1} * ({one_b} + {b} * p.dl / %(avgdl)s))
                ) AS score
                FROM q JOIN {post} AS p ON p.term = q.term {join}
                GROUP BY p.doc ORDER BY score DESC LIMIT %(k)s
            )
            SELECT d.id, d.text, d.metadata, best.score
            FROM best JOIN {t} AS d ON d.id = best.doc
            """
        ).format(
            terms=sql.Identifier(terms_table(row.tbl)),
            post=sql.Identifier(postings_table(row.tbl)),
            t=sql.Identifier(row.tbl),
            join=join,
            k1p=sql.Literal(BM25_K1 + 1),
            k1=sql.Literal(BM25_K1),
            one_b=sql.Literal(1 - BM25_B),
            b=sql.Literal(BM25_B),
        ),
        {
            "terms": words,
            "k": k,
            "f": jsonb(dict(where or {})),
            "n": float(row.count),
            "avgdl": max(row.lex_total / row.count, 1e-9),
        },
    )
    return _hits(await cur.fetchall())
