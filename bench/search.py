"""Search speed and quality per index kind at 100 k and 1 M vectors.

    python bench/search.py --sizes 100000,1000000

Vectors are synthetic: 384-dim unit vectors drawn around 2,000 random centres (clustered,
like embeddings, and about as isotropic as whitened ones). Queries are fresh draws from the
same mixture. Each kind uses the service's default parameters (service/settings.py) and one
FAISS thread, as the service does; queries go one at a time. recall@10 is against flat.
Where the default falls short of recall@10 0.95, a "tuned" row doubles the search-time knob
(hnsw ef_search, ivf nprobe) until it gets there: what the setting costs on such data.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bar_plot, machine, median, save_json, table
from service.runtime.index import INDEX_KINDS, IndexSpec, VectorIndex, set_threads
from service.settings import Settings


def mixture(n: int, centres: np.ndarray, rng: np.random.Generator, spread: float) -> np.ndarray:
    picks = rng.integers(0, len(centres), size=n)
    x = centres[picks] + spread * rng.standard_normal((n, centres.shape[1])).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = x.astype(np.float32)
    return out


TUNED_RECALL = 0.95


def run_queries(index: VectorIndex, queries: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Top-10 ids of each query, searched one at a time as requests do, and each latency."""
    found = np.empty((len(queries), 10), dtype=np.int64)
    latencies = []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        _, hit = index.search(q[None, :], 10)
        latencies.append(time.perf_counter() - t)
        found[i] = hit[0]
    return found, latencies


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


def spec_for(kind: str, settings: Settings) -> IndexSpec:
    params = {
        "flat": {},
        "hnsw": {
            "m": settings.hnsw_m,
            "ef_construction": settings.hnsw_ef_construction,
            "ef_search": settings.hnsw_ef_search,
        },
        "ivf": {"nlist": settings.ivf_nlist, "nprobe": settings.ivf_nprobe},
    }[kind]
    return IndexSpec(kind, params)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--build-threads", type=int, default=2)
    args = parser.parse_args()
    settings = Settings()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, args.dims)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows: list[list[object]] = []
    record: dict[str, object] = {"machine": machine(), "dims": args.dims}
    qps_series: dict[str, list[float]] = {k: [] for k in INDEX_KINDS}
    sizes = [int(s) for s in args.sizes.split(",")]
    for n in sizes:
        data = mixture(n, centres, rng, spread=0.08)
        queries = mixture(args.queries, centres, rng, spread=0.08)
        ids = np.arange(n, dtype=np.int64)
        truth: np.ndarray | None = None
        for kind in INDEX_KINDS:
            spec = spec_for(kind, settings)
            set_threads(args.build_threads)
            started = time.perf_counter()
            index = VectorIndex.create(
                spec, args.dims, train=data if kind == "ivf" else None, documents=n
            )
            for lo in range(0, n, 100_000):
                index.add(ids[lo : lo + 100_000], data[lo : lo + 100_000])
            build = time.perf_counter() - started
            set_threads(settings.index_threads)
            index.search(queries[:10], 10)
            found, latencies = run_queries(index, queries)
            if truth is None:
                truth = found
            recall = recall_at_10(found, truth)
            qps = 1 / median(latencies)
            qps_series[kind].append(qps)
            params = ",".join(f"{k}={v}" for k, v in spec.params.items()) or "-"
            if kind == "ivf":
                params += f" (lists={index.describe()['lists']})"
            rows.append([f"{n:,}", kind, params, build, recall, qps, 1000 * median(latencies)])
            record[f"{n}/{kind}"] = {"build_s": build, "recall@10": recall, "qps": qps}
            # The search-time knob that reaches recall@10 >= 0.95, doubling from the default.
            knob = {"hnsw": "ef_search", "ivf": "nprobe"}.get(kind)
            value = spec.params[knob] if knob else 0
            while knob and recall < TUNED_RECALL and value < 8192:
                value *= 2
                index.spec = replace(spec, params={**spec.params, knob: value})
                found, latencies = run_queries(index, queries)
                recall = recall_at_10(found, truth)
                if recall >= TUNED_RECALL or value >= 8192:
                    qps = 1 / median(latencies)
                    rows.append(
                        [
                            f"{n:,}",
                            f"{kind} (tuned)",
                            f"{knob}={value}",
                            "-",
                            recall,
                            qps,
                            1000 * median(latencies),
                        ]
                    )
                    record[f"{n}/{kind}/tuned"] = {knob: value, "recall@10": recall, "qps": qps}
            print(
                table(
                    ["vectors", "kind", "params", "build s", "recall@10", "queries/s", "p50 ms"],
                    rows[-2:] if knob and rows[-1][1] != kind else rows[-1:],
                ),
                flush=True,
            )
            del index
    print(
        f"\nSearch, one query at a time, {settings.index_threads} FAISS thread(s); "
        f"{args.dims}-dim synthetic clustered vectors; {machine()}\n"
    )
    print(table(["vectors", "kind", "params", "build s", "recall@10", "queries/s", "p50 ms"], rows))
    save_json("search", record)
    bar_plot(
        "search",
        "Queries per second by index kind",
        [f"{n:,}" for n in sizes],
        qps_series,
        "queries / second",
    )


if __name__ == "__main__":
    main()
