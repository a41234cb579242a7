"""Recall@10 against flat, and queries/s, of each index kind on a stored collection.

Rebuilds every kind from the collection's stored raw vectors with its current whitening
(the service's own build path, no document re-encoding), encodes the queries once with the
bundle, and times single-query searches. Prints a table (and nDCG@10 when qrels are given).

    .venv/bin/python bench/collection_kinds.py --data-dir DATA --collection scifact \
        --bundle BUNDLE --queries ../shared/data/scifact/queries.jsonl \
        --qrels ../shared/data/scifact/qrels/train.tsv

Run it with the server stopped (it opens the collection's files), or on a copy of DATA.
Index parameters and FAISS threads are the service's settings (SIMSVC_* variables).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from models.beir import read_beir_qrels, read_beir_queries
from service.metrics import Metrics
from service.options import make_collections
from service.runtime.assembly import EngineOptions, encoder_from_bundle
from service.runtime.bundle import load_bundle
from service.runtime.encoder import encode_texts
from service.runtime.index import INDEX_KINDS, IndexSpec, set_threads
from service.runtime.prompts import PromptedEncoder
from service.runtime.stats import ndcg_at_k
from service.runtime.store.local import LocalStore
from service.runtime.store.local_collection import LocalCollection
from service.settings import Settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True)
    parser.add_argument("--qrels", type=Path)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads")
    args = parser.parse_args()

    settings = Settings(data_dir=args.data_dir)
    set_threads(settings.index_threads)  # as the service does
    colls = make_collections(settings, Metrics())
    store = colls.store
    assert isinstance(store, LocalStore), "this bench reads the local store's files"
    coll = LocalCollection.open(store.root / args.collection, store.options, Metrics())
    current = coll.view
    assert current is not None
    print(
        f"collection {args.collection}: {coll.store.count} documents, {current.dims} dims, "
        f"whitening v{current.whitening.version} ({current.whitening.source})",
        file=sys.stderr,
    )

    queries = read_beir_queries(args.queries)
    qrels = read_beir_qrels(args.qrels) if args.qrels else {}
    qids = sorted(q for q in queries if not qrels or q in qrels)
    bundle = load_bundle(args.bundle)
    m = bundle.manifest
    encoder = encoder_from_bundle(bundle, EngineOptions(threads=args.threads, onnx_spin=True))
    # Queries as the service's search reads them: with the bundle's query prompt.
    prompted = PromptedEncoder(encoder, bundle.prompts.text(None, "query"))
    raw = encode_texts(prompted, [queries[q] for q in qids])[m.pooling]
    vectors = current.embed(raw)

    def doc_ids(ids: np.ndarray) -> list[str]:
        with coll.store.read() as r:
            found = r.fetch([int(i) for i in ids if i >= 0])
        return [found[int(i)].id for i in ids if int(i) in found]

    rows = []
    exact: np.ndarray | None = None
    for kind in INDEX_KINDS:
        spec = IndexSpec(kind, colls.defaults.params(kind))
        started = time.perf_counter()
        view = coll.build(spec, current.dims, current.whitening)
        build_s = time.perf_counter() - started
        view.index.search(vectors[:1], 10)  # warm up
        latencies = []
        found = np.empty((len(vectors), 10), dtype=np.int64)
        for i in range(len(vectors)):
            t = time.perf_counter()
            found[i] = view.index.search(vectors[i : i + 1], 10)[1][0]
            latencies.append(time.perf_counter() - t)
        if exact is None:
            exact = found
        recall = float(
            np.mean([len(set(a) & set(e)) / 10 for a, e in zip(found, exact, strict=True)])
        )
        row = {
            "kind": kind,
            "params": ",".join(f"{k}={v}" for k, v in spec.params.items()) or "-",
            "build_s": build_s,
            "recall@10": recall,
            "qps": len(latencies) / sum(latencies),
            "p50_ms": 1000 * statistics.median(latencies),
        }
        if qrels:
            row["ndcg@10"] = float(
                np.mean([ndcg_at_k(doc_ids(f), qrels[q]) for q, f in zip(qids, found, strict=True)])
            )
        if kind == "ivf":
            row["params"] = f"{row['params']} (lists={view.index.describe()['lists']})"
        rows.append(row)

    print(f"{len(qids)} queries, one at a time, k=10; recall@10 against flat\n")
    head = "| kind | params | build s | recall@10 | queries/s | p50 ms |" + (
        " nDCG@10 |" if qrels else ""
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        line = (
            f"| {r['kind']} | {r['params']} | {r['build_s']:.2f} | {r['recall@10']:.4f} | "
            f"{r['qps']:.0f} | {r['p50_ms']:.3f} |"
        )
        if qrels:
            line += f" {r['ndcg@10']:.4f} |"
        print(line)
    coll.store.close()
    coll.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
