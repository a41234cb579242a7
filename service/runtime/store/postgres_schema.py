"""The PostgreSQL store's schema: versioned migrations, the catalog row, and the DDL and SQL
helpers of one collection.

Layout: a catalog row per collection (`simsvc_collections`: model, index config, current
whitening version, lexical analyser and size, search defaults, change sequence, count, and
the name of its documents table), its whitening versions as plain float32 arrays
(`simsvc_whitenings`), and per collection generation a documents table
(`simsvc_docs_<id>_<generation>`) with its lexical index beside it: postings
(`<docs>_post`: term, document, count in it, the document's length) and term statistics
(`<docs>_terms`: term, document frequency), kept in the same transaction as the documents
(`postgres_writer`), so a BM25 query reads only its own terms' postings.

Why a table per collection rather than one table with a collection key: each collection has
its own vector dims (a pgvector column and its HNSW/ivfflat index need one fixed dimension)
and its own index parameters, deleting a collection is a `DROP TABLE` instead of a
million-row delete, and a refit builds the next generation's table aside and swaps the
catalog's pointer to it in one transaction, so every replica switches at once.

Migrations run at start-up under an advisory lock: replicas starting together take turns,
and the second finds the work done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from psycopg import AsyncConnection, sql

from service.runtime.index import IndexSpec
from service.runtime.store.base import ModelInfo

SCHEMA_VERSION_TABLE = "simsvc_schema"
ADVISORY_LOCK = 0x73696D737663  # "simsvc"
STAGING = "simsvc_staging"
"""A per-connection temporary table that COPY fills before an upsert merges it."""

MIGRATIONS: tuple[str, ...] = (
    # 1: catalog, whitenings
    """
    CREATE TABLE simsvc_collections (
        id bigserial PRIMARY KEY,
        name text NOT NULL UNIQUE,
        tbl text NOT NULL,
        generation integer NOT NULL DEFAULT 0,
        model jsonb NOT NULL,
        kind text NOT NULL,
        params jsonb NOT NULL,
        dims integer NOT NULL,
        whitening integer NOT NULL DEFAULT 0,
        trained_on bigint NOT NULL DEFAULT 0,
        analyzer text NOT NULL DEFAULT 'english',
        lex_total bigint NOT NULL DEFAULT 0,
        search jsonb NOT NULL DEFAULT '{}',
        seq bigint NOT NULL DEFAULT 0,
        count bigint NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE simsvc_whitenings (
        collection bigint NOT NULL REFERENCES simsvc_collections (id) ON DELETE CASCADE,
        version integer NOT NULL,
        source text NOT NULL,
        documents bigint NOT NULL DEFAULT 0,
        dims_in integer NOT NULL,
        dims_out integer NOT NULL,
        mu bytea,
        w bytea,
        PRIMARY KEY (collection, version)
    );
    """,
    # 2: an inverted index per collection generation (postings and document frequencies),
    # made from each row's term counts; the jsonb GIN index it replaces goes.
    """
    DO $$
    DECLARE
        t text;
    BEGIN
        FOR t IN SELECT tbl FROM simsvc_collections WHERE tbl <> '' LOOP
            EXECUTE format(
                'CREATE TABLE %1$I (term text NOT NULL, doc text NOT NULL, tf integer NOT NULL,'
                ' dl integer NOT NULL, PRIMARY KEY (term, doc) INCLUDE (tf, dl));'
                ' CREATE TABLE %2$I (term text PRIMARY KEY, df bigint NOT NULL);'
                ' INSERT INTO %1$I (term, doc, tf, dl) SELECT e.key, d.id, e.value::integer,'
                ' d.lex_len FROM %3$I d, jsonb_each_text(d.tf) e;'
                ' INSERT INTO %2$I (term, df) SELECT term, count(*) FROM %1$I GROUP BY term;'
                ' DROP INDEX IF EXISTS %4$I;',
                t || '_post', t || '_terms', t, t || '_lex');
        END LOOP;
    END
    $$;
    """,
)

COLUMNS = (
    "name, id, tbl, generation, model, kind, params, dims, whitening, trained_on, analyzer, "
    "lex_total, search, seq, count"
)


@dataclass(frozen=True)
class Row:
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
    analyzer: str
    lex_total: int
    search: dict[str, Any]
    seq: int
    count: int

    @classmethod
    def parse(cls, r: Sequence[Any]) -> Row:
        name, cid, tbl, gen, model, kind, params, dims, white, trained = r[:10]
        analyzer, lex_total, search, seq, count = r[10:]
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
            analyzer,
            int(lex_total),
            dict(search),
            int(seq),
            int(count),
        )


async def migrate(conn: AsyncConnection[Any]) -> int:
    """Bring the schema to the latest version (under the advisory lock); the version."""
    await conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK,))
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA_VERSION_TABLE} (version integer NOT NULL)"
        )
        cur = await conn.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA_VERSION_TABLE}")
        row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if current > len(MIGRATIONS):
            raise RuntimeError(
                f"the database schema is at version {current}, newer than this service's "
                f"{len(MIGRATIONS)}: upgrade the service"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            async with conn.transaction():
                await conn.execute(MIGRATIONS[version - 1])
                await conn.execute(
                    f"INSERT INTO {SCHEMA_VERSION_TABLE} (version) VALUES (%s)", (version,)
                )
        return len(MIGRATIONS)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK,))


def jsonb(value: Any) -> Any:
    """A value sent as jsonb (orjson: the same encoding the local store writes)."""
    from psycopg.types.json import Jsonb

    return Jsonb(value, dumps=lambda v: orjson.dumps(v).decode())


def q(template: str, **idents: str) -> sql.Composed:
    """SQL with identifiers (table and index names) quoted into place."""
    return sql.SQL(template).format(**{k: sql.Identifier(v) for k, v in idents.items()})


def docs_table(collection_id: int, generation: int) -> str:
    return f"simsvc_docs_{collection_id}_{generation}"


def postings_table(table: str) -> str:
    """The postings of a documents table: (term, doc) -> the term's count, the doc's length."""
    return f"{table}_post"


def terms_table(table: str) -> str:
    """The term statistics of a documents table: term -> documents holding it."""
    return f"{table}_terms"


def create_lexical_tables(table: str) -> sql.Composed:
    """The inverted index of a documents table (empty).

    The postings' primary key carries the count and the length, so a query term's postings
    are one range of one index (an index-only scan once the table is vacuumed)."""
    return sql.SQL(
        """
        CREATE TABLE {post} (
            term text NOT NULL,
            doc text NOT NULL,
            tf integer NOT NULL,
            dl integer NOT NULL,
            PRIMARY KEY (term, doc) INCLUDE (tf, dl)
        );
        CREATE TABLE {terms} (term text PRIMARY KEY, df bigint NOT NULL);
        """
    ).format(post=sql.Identifier(postings_table(table)), terms=sql.Identifier(terms_table(table)))


def fill_lexical_tables(table: str) -> sql.Composed:
    """Empty a documents table's inverted index and make it again from the rows' term
    counts (a new generation, a new analyser)."""
    return q(
        "DELETE FROM {p}; DELETE FROM {s}; "
        "INSERT INTO {p} (term, doc, tf, dl) SELECT e.key, d.id, e.value::integer, d.lex_len "
        "FROM {t} d, jsonb_each_text(d.tf) e ORDER BY 1, 2; "
        "INSERT INTO {s} (term, df) SELECT term, count(*) FROM {p} GROUP BY term",
        t=table,
        p=postings_table(table),
        s=terms_table(table),
    )


def drop_tables(table: str) -> sql.Composed:
    """A documents table and its inverted index."""
    return q(
        "DROP TABLE IF EXISTS {t}, {p}, {s}",
        t=table,
        p=postings_table(table),
        s=terms_table(table),
    )


def create_docs_table(table: str, dims: int) -> sql.Composed:
    """The documents table of one collection generation (no vector index yet), and its
    inverted index.

    `tf` maps each analysed term to its count in the document, `lex_len` is the document's
    number of terms: the source the postings are made from (and made again from when the
    analyser changes); the postings and term statistics are what BM25 reads."""
    t = sql.Identifier(table)
    return sql.SQL(
        """
        CREATE TABLE {t} (
            id text PRIMARY KEY,
            text text NOT NULL,
            metadata jsonb NOT NULL,
            raw bytea NOT NULL,
            emb vector({dims}) NOT NULL,
            tf jsonb NOT NULL,
            lex_len integer NOT NULL
        );
        CREATE INDEX {meta} ON {t} USING gin (metadata jsonb_path_ops);
        {lexical}
        """
    ).format(
        t=t,
        dims=sql.Literal(dims),
        meta=sql.Identifier(f"{table}_meta"),
        lexical=create_lexical_tables(table),
    )


def create_vector_index(
    table: str, name: str, kind: str, params: dict[str, int], lists: int
) -> sql.Composed:
    """The ANN index over the whitened vectors (inner product on unit vectors)."""
    index, t = sql.Identifier(name), sql.Identifier(table)
    if kind == "hnsw":
        return sql.SQL(
            "CREATE INDEX {index} ON {t} USING hnsw (emb vector_ip_ops) "
            "WITH (m = {m}, ef_construction = {efc})"
        ).format(
            index=index,
            t=t,
            m=sql.Literal(params["m"]),
            efc=sql.Literal(params["ef_construction"]),
        )
    if kind == "ivf":
        return sql.SQL(
            "CREATE INDEX {index} ON {t} USING ivfflat (emb vector_ip_ops) WITH (lists = {lists})"
        ).format(index=index, t=t, lists=sql.Literal(lists))
    raise ValueError(f"no vector index for kind {kind!r}")


def vector_index_prefix(table: str) -> str:
    return f"{table}_emb"
