"""Dense, lexical and hybrid search on BEIR SciFact (train qrels), through the service.

Indexes the corpus into a collection (once: the data dir is kept), reads each train query's
dense and lexical lists through the API (explain), tunes the fusion on them with the
service's own `fuse()` (a grid over RRF's k and weight, and the weighted combination's
alpha), then measures the best settings through the API: nDCG@10, recall@100, MRR@10 per
mode, and the p50 latency of one query per mode with flat and hnsw indexes.

    .venv/bin/python bench/hybrid.py --bundle BUNDLE --data-dir bench/out/hybrid/minilm
    .venv/bin/python bench/hybrid.py --bundle BUNDLE --data-dir ... --rerank 20  # cross-encoder

Without --bundle: all-MiniLM-L6-v2, mean pooling, max length 256, no whitening.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import OUT, bundle, machine, save_json, shared_dir, table
from bench.loadgen import Server
from service.client import (
    ServiceClient,
    evaluate_retrieval,
    index_file,
    read_beir_qrels,
    read_beir_queries,
    search,
)
from service.runtime.fusion import FusionParams, fuse
from service.runtime.stats import ndcg_at_k
from service.runtime.store.base import Document, Hit

PORT = 8742


def _lists(
    client: ServiceClient, name: str, queries: dict[str, str], qids: list[str], depth: int
) -> dict[str, dict[str, list[Hit]]]:
    """Each query's dense and lexical lists, `depth` deep."""
    out: dict[str, dict[str, list[Hit]]] = {}
    for qid in qids:
        out[qid] = {}
        for mode in ("dense", "lexical"):
            hits = search(client, name, queries[qid], depth, mode=mode)
            out[qid][mode] = [Hit(Document(h["id"], ""), float(h["score"])) for h in hits]
    return out


def _grid(
    lists: dict[str, dict[str, list[Hit]]], qrels: dict[str, dict[str, int]]
) -> list[tuple[float, FusionParams]]:
    """nDCG@10 of each fusion setting over the queries, best first."""
    settings = [
        FusionParams("rrf", k, alpha, c)
        for k in (10, 20, 40, 60, 100)
        for alpha in (0.3, 0.4, 0.5, 0.6, 0.7)
        for c in (50, 100)
    ] + [FusionParams("weighted", 60, alpha, c) for alpha in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
         for c in (50, 100)]  # fmt: skip
    scored = []
    for params in settings:
        total = 0.0
        for qid, both in lists.items():
            cut = {m: hits[: params.candidates] for m, hits in both.items()}
            ranked = [h.document.id for h in fuse(cut, params, 10)]
            total += ndcg_at_k(ranked, qrels[qid])
        scored.append((total / len(lists), params))
    scored.sort(key=lambda s: -s[0])
    return scored


def _latency(client: ServiceClient, name: str, texts: list[str], body: dict[str, Any]) -> float:
    times = []
    for text in texts:
        started = time.perf_counter()
        client.request("POST", f"/v1/collections/{name}/search", json={"query": text, **body})
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--data-dir", type=Path, default=OUT / "hybrid" / "minilm")
    parser.add_argument("--collection", default="scifact")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--depth", type=int, default=100, help="list depth for the tuning")
    parser.add_argument("--rerank", type=int, default=0, help="also rerank the top N")
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    shared = shared_dir()
    scifact = shared / "data" / "scifact"
    queries = read_beir_queries(scifact / "queries.jsonl")
    qrels = read_beir_qrels(scifact / "qrels" / "train.tsv")
    qids = [q for q in sorted(qrels) if q in queries]
    model = args.bundle or bundle(
        "minilm-256", str(shared / "models" / "all-MiniLM-L6-v2"), max_length=256
    )
    label = args.label or model.name
    args.data_dir.mkdir(parents=True, exist_ok=True)
    server = Server(model, PORT, args.threads, {"SIMSVC_DATA_DIR": str(args.data_dir)})
    try:
        client = ServiceClient(f"http://127.0.0.1:{PORT}", timeout=600)
        names = [c["name"] for c in client.request("GET", "/v1/collections")["collections"]]
        if args.collection not in names:
            started = time.perf_counter()
            index_file(client, scifact / "corpus.jsonl", args.collection, progress=sys.stderr,
                       state_path=args.data_dir / "index.state")  # fmt: skip
            print(f"indexed in {time.perf_counter() - started:.0f}s", file=sys.stderr)
        client.request(
            "PUT", f"/v1/collections/{args.collection}", json={"index": {"kind": "flat"}}
        )
        lists = _lists(client, args.collection, queries, qids, args.depth)
        grid = _grid(lists, qrels)
        best_score, best = grid[0]
        best_rrf = next(p for _, p in grid if p.method == "rrf")
        fusion = {"method": best.method, "rrf_k": best.rrf_k, "alpha": best.alpha,
                  "candidates": best.candidates}  # fmt: skip
        rows = []
        runs: list[tuple[str, str | None, dict[str, Any] | None, int]] = [
            ("dense", "dense", None, 0),
            ("lexical", "lexical", None, 0),
            ("hybrid, RRF k 60 (equal weights)", "hybrid", {"method": "rrf", "rrf_k": 60,
             "alpha": 0.5, "candidates": 100}, 0),
            (f"hybrid, tuned ({best.method})", "hybrid", fusion, 0),
        ]  # fmt: skip
        if args.rerank:
            runs.append((f"hybrid tuned + rerank top {args.rerank}", "hybrid", fusion, args.rerank))
        for name, mode, fus, rerank in runs:
            figures = evaluate_retrieval(
                client, args.collection, queries, qrels, mode=mode, fusion=fus, rerank=rerank
            )
            rows.append([name, figures["ndcg@10"], figures["recall@100"], figures["mrr@10"]])
        sample = [queries[q] for q in qids[: args.latency_queries]]
        latency = []
        for kind in ("flat", "hnsw"):
            client.request(
                "PUT", f"/v1/collections/{args.collection}", json={"index": {"kind": kind}}
            )
            for mode in ("dense", "lexical", "hybrid"):
                body: dict[str, Any] = {"mode": mode}
                if mode == "hybrid":
                    body["fusion"] = fusion
                latency.append([kind, mode, _latency(client, args.collection, sample, body)])
        client.request(
            "PUT", f"/v1/collections/{args.collection}", json={"index": {"kind": "flat"}}
        )
        client.close()
    finally:
        server.stop()
    print(f"\n{machine()}\nSciFact, {len(qids)} train queries, {label}\n")
    print(table(["mode", "nDCG@10", "recall@100", "MRR@10"], rows))
    print(f"\nfusion tuned on these queries' lists ({args.depth} deep): best {best} "
          f"nDCG@10 {best_score:.4f}; best RRF {best_rrf}")  # fmt: skip
    print("\ntop fusion settings:")
    top = [[round(s, 4), p.method, p.rrf_k, p.alpha, p.candidates] for s, p in grid[:8]]
    print(table(["nDCG@10", "method", "rrf_k", "alpha", "candidates"], top))
    print(f"\none query at a time, median of {len(sample)}, ms (query encoding included):")
    print(table(["index", "mode", "p50 ms"], latency))
    save_json(f"hybrid-{label}", {"rows": rows, "latency": latency, "best": fusion,
              "grid": [[s, p.__dict__] for s, p in grid], "machine": machine()})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
