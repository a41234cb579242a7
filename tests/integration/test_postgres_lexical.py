"""The PostgreSQL store's inverted index on a real server: exact under concurrent writers,
read through its indexes (not a pass over the collection), and built for collections that
an older schema created."""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from typing import Any

import numpy as np
import pytest

from service.errors import ConflictError
from service.runtime.index import IndexSpec
from service.runtime.lexical import term_counts
from service.runtime.store.base import CollectionSpec, Document, ModelInfo
from service.runtime.store.postgres import PostgresStore
from service.runtime.store.postgres_pool import PostgresOptions
from service.runtime.store.postgres_schema import postings_table, terms_table
from service.runtime.whitening import Whitening

DIMS = 8
WORDS = [
    "cat",
    "dog",
    "bird",
    "fish",
    "runs",
    "sings",
    "plays",
    "old",
    "red",
    "green",
    "city",
    "park",
    "song",
    "ball",
    "tree",
    "rain",
]


def _spec() -> CollectionSpec:
    return CollectionSpec(ModelInfo("fake", "mean", DIMS), IndexSpec("flat"), DIMS,
                          Whitening.identity(DIMS))  # fmt: skip


def _vectors(n: int, rng: np.random.Generator) -> Any:
    v = rng.standard_normal((n, DIMS)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))


async def _open(url: str) -> PostgresStore:
    store = PostgresStore(PostgresOptions(url, pool_max=12, health_interval_s=60))
    await store.open()
    assert store.problem is None
    return store


async def _upsert(store: PostgresStore, docs: list[Document], seed: int) -> None:
    writer = await store.begin("c")
    try:
        await writer.upsert(docs, _vectors(len(docs), np.random.default_rng(seed)))
    except BaseException:
        writer.abort()
        raise
    await writer.commit()


async def _stats(store: PostgresStore) -> dict[str, Any]:
    """What the index holds, and a recount of it from the stored texts."""
    pool = store._pool.need_pool()
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT tbl, count, lex_total, analyzer FROM simsvc_collections")
        tbl, count, lex_total, analyzer = await cur.fetchone()
        rows = await (await conn.execute(f'SELECT id, text FROM "{tbl}"')).fetchall()
        df = dict(
            await (await conn.execute(f'SELECT term, df FROM "{terms_table(tbl)}"')).fetchall()
        )
        cur = await conn.execute(f'SELECT term, doc, tf, dl FROM "{postings_table(tbl)}"')
        postings = {(t, d): (tf, dl) for t, d, tf, dl in await cur.fetchall()}
    recount: Counter[str] = Counter()
    expected: dict[tuple[str, str], tuple[int, int]] = {}
    total = 0
    for doc_id, text in rows:
        tf, n = term_counts(analyzer, text)
        recount.update(tf.keys())  # documents holding each term
        total += n
        expected.update({(t, doc_id): (c, n) for t, c in tf.items()})
    return {
        "stored": (dict(df), postings, int(count), int(lex_total)),
        "recounted": (dict(recount), expected, len(rows), total),
    }


def test_the_lexical_index_stays_exact_under_concurrent_writers(postgres_url: str) -> None:
    """Writers upsert, replace and delete overlapping ids at once: every term's document
    frequency, every posting, the count and the total length equal a recount."""

    async def run() -> tuple[dict[str, Any], int, int]:
        store = await _open(postgres_url)
        try:
            assert await store.create("c", _spec())
            committed = conflicts = 0

            async def writer(seed: int) -> None:
                nonlocal committed, conflicts
                rng = random.Random(seed)
                for step in range(25):
                    ids = sorted(rng.sample([f"d{i}" for i in range(40)], rng.randint(1, 8)))
                    try:
                        if rng.random() < 0.3:
                            w = await store.begin("c")
                            try:
                                for doc_id in ids:
                                    await w.delete(doc_id)
                            except BaseException:
                                w.abort()
                                raise
                            await w.commit()
                        else:
                            docs = [Document(i, _text(rng), {"w": seed}) for i in ids]
                            await _upsert(store, docs, seed * 100 + step)
                        committed += 1
                    except ConflictError:
                        conflicts += 1  # a deadlock the database broke: nothing written
                    await asyncio.sleep(0)

            await asyncio.gather(*(writer(s) for s in range(6)))
            return await _stats(store), committed, conflicts
        finally:
            await store.close()

    stats, committed, conflicts = asyncio.run(run())
    assert committed >= 100 and conflicts <= committed // 10
    df, _, count, _ = stats["stored"]
    assert count > 0 and df  # the test exercised something
    assert stats["stored"] == stats["recounted"]


async def _plan(store: PostgresStore, query: str) -> str:
    """EXPLAIN ANALYZE of the store's own BM25 statement for `query`."""
    from service.runtime.store import postgres_search

    pool = store._pool.need_pool()
    plans: list[str] = []
    async with pool.connection() as conn:
        entry = await store.entry("c")

        class Explaining:
            async def execute(self, statement: Any, params: Any) -> Any:
                from psycopg import sql

                cur = await conn.execute(
                    sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT) ") + statement, params
                )
                plans.append("\n".join(r[0] for r in await cur.fetchall()))
                return await conn.execute(statement, params)

        await postgres_search.bm25(Explaining(), entry._row, query, 10, None)
    return plans[0]


def test_a_rare_term_reads_its_postings_not_the_collection(postgres_url: str) -> None:
    async def run() -> tuple[str, list[Any]]:
        store = await _open(postgres_url)
        try:
            assert await store.create("c", _spec())
            rng = random.Random(1)
            docs = [Document(f"d{i}", _text(rng), {}) for i in range(3000)]
            docs[1234] = Document("d1234", "a zebra plays in the park", {})
            for start in range(0, len(docs), 500):
                await _upsert(store, docs[start : start + 500], start)
            pool = store._pool.need_pool()
            async with pool.connection() as conn:
                for t in ("simsvc_docs_1_0", postings_table("simsvc_docs_1_0")):
                    await conn.execute(f'ANALYZE "{t}"')
            plan = await _plan(store, "zebra")
            hits = await store.lexical("c", "zebra", 10, None)
            return plan, hits
        finally:
            await store.close()

    plan, hits = asyncio.run(run())
    assert [h.document.id for h in hits] == ["d1234"]
    assert "Seq Scan" not in plan, plan
    # Every scan of the postings returned the one posting of the rare term.
    scans = [
        float(m.group(1))
        for line in plan.splitlines()
        if "_post" in line and (m := re.search(r"actual time=\S+ rows=([\d.]+)", line))
    ]
    assert scans and max(scans) == 1, plan


def test_a_collection_from_schema_version_1_gets_its_index(postgres_url: str) -> None:
    """Migration 2 builds postings and frequencies from the rows an older service wrote."""
    import psycopg

    from service.runtime.store.postgres_schema import MIGRATIONS, create_docs_table

    async def run() -> tuple[dict[str, Any], list[str]]:
        store = await _open(postgres_url)
        try:
            assert await store.create("c", _spec())
            rng = random.Random(2)
            await _upsert(store, [Document(f"d{i}", _text(rng), {}) for i in range(50)], 0)
        finally:
            await store.close()
        # Back to version 1: the index tables gone, as an older service left them.
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            tbl = "simsvc_docs_1_0"
            conn.execute(f'DROP TABLE "{postings_table(tbl)}", "{terms_table(tbl)}"')
            conn.execute(f'CREATE INDEX "{tbl}_lex" ON "{tbl}" USING gin (tf)')
            conn.execute("DELETE FROM simsvc_schema WHERE version > 1")
        assert "CREATE TABLE" in create_docs_table(tbl, DIMS).as_string(None)
        store = await _open(postgres_url)
        try:
            with psycopg.connect(postgres_url) as conn:
                version = conn.execute("SELECT max(version) FROM simsvc_schema").fetchone()
                gin = conn.execute(
                    "SELECT indexname FROM pg_indexes WHERE indexname = %s", (f"{tbl}_lex",)
                ).fetchall()
            assert version is not None and version[0] == len(MIGRATIONS) and not gin
            hits = await store.lexical("c", "cat dog", 5, None)
            return await _stats(store), [h.document.id for h in hits]
        finally:
            await store.close()

    stats, found = asyncio.run(run())
    assert stats["stored"] == stats["recounted"]
    assert found


@pytest.mark.parametrize("change", ["analyzer", "dims"])
def test_rebuilds_remake_the_index(postgres_url: str, change: str) -> None:
    async def run() -> dict[str, Any]:
        store = await _open(postgres_url)
        try:
            assert await store.create("c", _spec())
            rng = random.Random(3)
            docs = [Document(f"d{i}", _text(rng) + " The Cats", {}) for i in range(60)]
            await _upsert(store, docs, 0)
            if change == "analyzer":
                await store.configure("c", analyzer="simple")
            else:
                await store.configure("c", dims=DIMS - 2)
            return await _stats(store)
        finally:
            await store.close()

    stats = asyncio.run(run())
    assert stats["stored"] == stats["recounted"]
    assert ("the" in stats["stored"][0]) == (change == "analyzer")
