"""The PostgreSQL store's two rankings, as SQL: nearest whitened vectors, and BM25.

BM25 here is FTS5's bm25() (the local store's ranking) written out: the same idf (floored at
1e-6), k1 1.2, b 0.75, document length in terms and the collection's average, so both stores
rank a collection's documents alike. Per-term counts live in each row's `tf` jsonb, found
through its GIN index (`tf ?| terms`); document frequencies are counted in the same snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import sql

from service.runtime.lexical import BM25_B, BM25_K1, bm25_idf, terms
from service.runtime.store.base import Document, Filter, Hit
from service.runtime.store.postgres_schema import Row, jsonb, q
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
    """The k best BM25 matches of the query's analysed terms among rows matching `where`."""
    words = list(dict.fromkeys(terms(row.analyzer, query)))[:MAX_QUERY_TERMS]
    if not words or row.count == 0:
        return []
    cur = await conn.execute(
        q("SELECT t, (SELECT count(*) FROM {t} WHERE tf ? t) FROM unnest(%s::text[]) AS t",
          t=row.tbl),
        (words,),
    )  # fmt: skip
    matching = dict(await cur.fetchall())
    avgdl = max(row.lex_total / row.count, 1e-9)
    parts: list[sql.Composable] = []
    params: dict[str, Any] = {
        "terms": words, "k": k, "f": jsonb(dict(where or {})), "avgdl": avgdl,
    }  # fmt: skip
    for i, word in enumerate(words):
        params[f"w{i}"] = word
        params[f"idf{i}"] = bm25_idf(row.count, int(matching.get(word, 0)))
        f = sql.SQL("coalesce((tf ->> %({w})s)::float8, 0)").format(w=sql.SQL(f"w{i}"))
        parts.append(
            sql.SQL(
                "%({idf})s * {f} * {k1p} / ({f} + {k1} * ({one_b} + {b} * lex_len / %(avgdl)s))"
            ).format(
                idf=sql.SQL(f"idf{i}"),
                f=f,
                k1p=sql.Literal(BM25_K1 + 1),
                k1=sql.Literal(BM25_K1),
                one_b=sql.Literal(1 - BM25_B),
                b=sql.Literal(BM25_B),
            )
        )
    cond = sql.SQL(" AND metadata @> %(f)s") if where else sql.SQL("")
    cur = await conn.execute(
        sql.SQL(
            "SELECT id, text, metadata, {score} AS s FROM {t} WHERE tf ?| %(terms)s{cond} "
            "ORDER BY s DESC LIMIT %(k)s"
        ).format(score=sql.SQL(" + ").join(parts), t=sql.Identifier(row.tbl), cond=cond),
        params,
    )
    return _hits(await cur.fetchall())
