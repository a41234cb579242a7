"""The PostgreSQL store's schema: versioned migrations, the catalog row, and the DDL and SQL
helpers of one collection.

Layout: a catalog row per collection (`simsvc_collections`: model, index config, current
whitening version, lexical analyser and size, search defaults, change sequence, count, and
the name of its documents table), its whitening versions as plain float32 arrays
(`simsvc_whitenings`), and one documents table per collection generation
(`simsvc_docs_<id>_<generation>`).

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


def create_docs_table(table: str, dims: int) -> sql.Composed:
    """The documents table of one collection generation (no vector index yet).

    `tf` maps each analysed term to its count in the document (a GIN index finds the
    documents holding any query term), `lex_len` is the document's number of terms: with
    the catalog's total and count they are everything BM25 needs."""
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
        CREATE INDEX {lex} ON {t} USING gin (tf);
        """
    ).format(
        t=t,
        dims=sql.Literal(dims),
        meta=sql.Identifier(f"{table}_meta"),
        lex=sql.Identifier(f"{table}_lex"),
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
