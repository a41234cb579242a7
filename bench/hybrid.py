"""Dense, lexical and hybrid search on BEIR SciFact (train qrels), through the service.

Indexes the corpus into a collection (once: the data dir is kept), reads each train query's
dense and lexical lists through the API (explain), tunes the fusion on them with the
service's own `fuse()` (`service.cli.tuning`, the grid `simsvc tune-search` uses: RRF's k
and weight, the weighted combination's normalisation and alpha), then measures the best
settings through the API: nDCG@10, recall@100, MRR@10 per mode, and the p50 latency of one
query per mode with flat and hnsw indexes.

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
from models.beir import read_beir_qrels, read_beir_queries
from service.cli.client import ServiceClient, evaluate_retrieval, index_file, judged_queries
from service.cli.tuning import default_grid, read_lists, tune

PORT = 8742


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
    parser.add_argument(
        "--qrels", type=Path, help="judged queries (default: SciFact's train qrels)"
    )
    args = parser.parse_args()
    shared = shared_dir()
    scifact = shared / "data" / "scifact"
    queries = read_beir_queries(scifact / "queries.jsonl")
    qrels = read_beir_qrels(args.qrels or scifact / "qrels" / "train.tsv")
    qids = judged_queries(queries, qrels)
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
        lists = read_lists(client, args.collection, queries, qids, args.depth)
        grid = tune(lists, qrels, default_grid(args.depth))
        hybrid = [(s, p) for s, p in grid if p.fusion is not None]
        best_score, best = hybrid[0]
        best_rrf = next(p for _, p in hybrid if p.fusion and p.fusion.method == "rrf")
        fusion = best.as_defaults()["fusion"]
        rows = []
        runs: list[tuple[str, str | None, dict[str, Any] | None, int]] = [
            ("dense", "dense", None, 0),
            ("lexical", "lexical", None, 0),
            ("hybrid, RRF k 60 (equal weights)", "hybrid", {"method": "rrf", "rrf_k": 60,
             "alpha": 0.5, "candidates": 100}, 0),
            ("hybrid, default fusion (weighted minmax alpha 0.4)", "hybrid", {"method":
             "weighted", "normalization": "minmax", "alpha": 0.4, "candidates": 100}, 0),
            (f"hybrid, tuned ({best.label()})", "hybrid", fusion, 0),
        ]  # fmt: skip
        if args.rerank:
            runs.append((f"hybrid tuned + rerank top {args.rerank}", "hybrid", fusion, args.rerank))
        for name, mode, fus, rerank in runs:
            figures = evaluate_retrieval(
                client, args.collection, queries, qrels, mode=mode, fusion=fus, rerank=rerank
            )
            rows.append(
                [name] + [round(100 * figures[m], 2) for m in ("ndcg@10", "recall@100", "mrr@10")]
            )
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
    judged = args.qrels or "train qrels"
    print(f"\n{machine()}\nSciFact, {len(qids)} judged queries ({judged}), {label}\n")
    print(table(["mode", "nDCG@10 x100", "recall@100 x100", "MRR@10 x100"], rows))
    print(f"\nfusion tuned on these queries' lists ({args.depth} deep, `simsvc tune-search`'s "
          f"grid): best {best.label()} nDCG@10 {best_score:.4f}")  # fmt: skip
    print(f"best RRF: {best_rrf.label()}")
    print("\ntop settings (dense and lexical alone included):")
    top = [[round(100 * s, 2), p.label()] for s, p in grid[:10]]
    print(table(["nDCG@10 x100", "setting"], top))
    print(f"\none query at a time, median of {len(sample)}, ms (query encoding included):")
    print(table(["index", "mode", "p50 ms"], latency))
    save_json(f"hybrid-{label}", {"rows": rows, "latency": latency, "best": fusion,
              "grid": [[s, p.label()] for s, p in grid], "machine": machine()})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
