"""Cross-encoder throughput and /rerank latency: this project (fp32, int8) against
sentence-transformers' CrossEncoder, same checkpoint, same threads, same pairs, one run.

    python bench/cross.py
    python bench/cross.py --repeats 3 --rerank-requests 20

The checkpoint is all-MiniLM-L6-v2's encoder under a random one-logit classifier
(`AutoModelForSequenceClassification.from_pretrained(..., num_labels=1)`), written to
bench/out: shape-true for speed, meaningless for quality. Engines run interleaved,
`--repeats` times; each figure is the median, each ratio the median of per-repeat ratios.
Both sides sort pairs by length and pad per batch (CrossEncoder.predict does too).

/rerank: 1 query x 20 passages of 256 tokens through HTTP (`simsvc serve` on loopback),
against CrossEncoder.predict on the same 20 pairs in process, and this project's core in
process (the HTTP and batcher overhead is the difference).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import OUT, machine, median, save_json, shared_dir, table, timed
from bench.encoder import passages
from bench.loadgen import Server, percentile
from models.datasets import read_pairs
from service.runtime.assembly import EngineOptions, cross_encoder_from_bundle
from service.runtime.bundle import load_bundle
from service.runtime.cross import cross_logits, raw_scores

Score = Callable[[list[tuple[str, str]]], np.ndarray]
MAX_LENGTH = 512
PASSAGE_TOKENS = 256


def cross_checkpoint(base: Path) -> Path:
    """all-MiniLM-L6-v2's weights under a random one-logit classifier (speed only)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = OUT / "checkpoints" / "minilm-cross"
    if (out / "config.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
    return out


def cross_bundle(name: str, base: Path, checkpoint: Path, quantize: str | None) -> Path:
    """A speed-only bundle: the base bi-encoder and the cross-encoder, nothing fitted."""
    from models.build import BuildOptions
    from service.cli.default_bundle import cached_bundle

    out = cached_bundle(
        BuildOptions(
            model=str(base),
            out=OUT / "bundles" / name,
            quantize=quantize,
            cross_model=str(checkpoint),
            cross_max_length=MAX_LENGTH,
        ),
        say=lambda m: print(f"  [{name}] {m}", flush=True),
    )
    cross = load_bundle(out).manifest.cross
    assert cross is not None
    print(f"  [{name}] parity {cross.parity.max_abs_diff:.2e}", flush=True)
    return out


def ours(bundle_dir: Path, threads: int, batch: int) -> Score:
    b = load_bundle(bundle_dir)
    core = cross_encoder_from_bundle(b, EngineOptions(threads=threads, onnx_spin=True))
    assert core is not None

    def run(pairs: list[tuple[str, str]]) -> np.ndarray:
        return raw_scores(cross_logits(core, pairs, max_tokens=1 << 30, max_size=batch))

    return run


def sentence_transformers(checkpoint: Path, threads: int, batch: int) -> Score:
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(threads)
    model = CrossEncoder(str(checkpoint), device="cpu", max_length=MAX_LENGTH)
    identity = torch.nn.Identity()

    def run(pairs: list[tuple[str, str]]) -> np.ndarray:
        out = model.predict(pairs, batch_size=batch, activation_fn=identity)
        return np.asarray(out, dtype=np.float64)

    return run


def query_passage_pairs(shared: Path, checkpoint: Path, n: int) -> list[tuple[str, str]]:
    """SciFact queries, each with a passage of exactly 256 tokens of English text."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    tok.no_truncation()
    texts = passages(shared / "data/corpus/en-wiki-gutenberg-sample.txt.xz", n, 1800)
    cut = [tok.decode(tok.encode(t, add_special_tokens=False).ids[:PASSAGE_TOKENS]) for t in texts]
    with open(shared / "data/scifact/queries.jsonl", encoding="utf-8") as fh:
        queries = [json.loads(line)["text"] for line in fh if line.strip()][:n]
    return list(zip(queries, cut, strict=True))


HEADERS = [
    "inputs",
    "batch",
    "pairs",
    "sent-tr /s",
    "fp32 /s",
    "int8 /s",
    "fp32 ratio",
    "int8 ratio",
    "fp32≈ST max |Δlogit|",
    "int8≈fp32 max |Δlogit|",
]


def throughput(
    inputs: dict[str, list[tuple[str, str]]],
    bundles: dict[str, Path],
    checkpoint: Path,
    args: argparse.Namespace,
    record: dict[str, object],
) -> list[list[object]]:
    rows: list[list[object]] = []
    for kind, items in inputs.items():
        for batch in (1, 32):
            n = len(items) if batch == 32 else max(8, len(items) // 4)
            subset = items[:n]
            engines = {
                "simsvc fp32": ours(bundles["fp32"], args.threads, batch),
                "simsvc int8": ours(bundles["int8"], args.threads, batch),
                "sentence-transformers": sentence_transformers(checkpoint, args.threads, batch),
            }
            logits = {k: fn(subset) for k, fn in engines.items()}  # warm-up + outputs
            rates: dict[str, list[float]] = {k: [] for k in engines}
            for _ in range(args.repeats):
                for k, fn in engines.items():
                    rates[k].append(n / timed(partial(fn, subset)))
            st = rates["sentence-transformers"]
            ratio = {
                k: median([a / b for a, b in zip(rates[k], st, strict=True)])
                for k in ("simsvc fp32", "simsvc int8")
            }
            vs_st = float(np.abs(logits["simsvc fp32"] - logits["sentence-transformers"]).max())
            int8 = float(np.abs(logits["simsvc int8"] - logits["simsvc fp32"]).max())
            rows.append(
                [
                    kind,
                    batch,
                    n,
                    median(st),
                    median(rates["simsvc fp32"]),
                    median(rates["simsvc int8"]),
                    f"{ratio['simsvc fp32']:.2f}x",
                    f"{ratio['simsvc int8']:.2f}x",
                    f"{vs_st:.1e}",
                    f"{int8:.3f}",
                ]
            )
            record[f"{kind}/b{batch}"] = {
                "pairs": n,
                "rates": rates,
                "ratio_vs_st": ratio,
                "max_abs_logit_fp32_vs_st": vs_st,
                "max_abs_logit_int8_vs_fp32": int8,
            }
            print(table(HEADERS, rows[-1:]), flush=True)
    return rows


def rerank_latency(
    bundle_dir: Path,
    checkpoint: Path,
    pairs: list[tuple[str, str]],
    args: argparse.Namespace,
    record: dict[str, object],
) -> list[list[object]]:
    """p50/p95 of one /rerank (1 query x 20 passages) against the same work in process."""
    import httpx

    query = pairs[0][0]
    texts = [p for _, p in pairs[:20]]
    same = [(query, t) for t in texts]
    in_process = {
        "sentence-transformers CrossEncoder.predict (in process)": sentence_transformers(
            checkpoint, args.threads, 32
        ),
        "simsvc fp32 core (in process)": ours(bundle_dir, args.threads, 32),
    }
    times: dict[str, list[float]] = {}
    server = Server(bundle_dir, args.port, args.threads)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=120) as http:
            body = {"query": query, "texts": texts}
            key = "simsvc POST /rerank (HTTP, loopback)"
            times[key] = []
            for _ in range(3):  # warm-up
                assert http.post("/rerank", json=body).status_code == 200
            for _ in range(args.rerank_requests):  # interleaved with the in-process runs
                started = time.perf_counter()
                resp = http.post("/rerank", json=body)
                times[key].append(time.perf_counter() - started)
                assert resp.status_code == 200 and len(resp.json()) == 20
                for name, fn in in_process.items():
                    times.setdefault(name, []).append(timed(partial(fn, same)))
    finally:
        server.stop()
    rows = []
    for name, values in times.items():
        ms = [1000 * v for v in values]
        rows.append([name, len(ms), percentile(ms, 50), percentile(ms, 95)])
    record["rerank_1x20"] = {name: values for name, values in times.items()}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=512, help="STS-B dev pairs")
    parser.add_argument("--passages", type=int, default=64, help="(query, passage) pairs")
    parser.add_argument("--rerank-requests", type=int, default=40)
    parser.add_argument("--port", type=int, default=8793)
    args = parser.parse_args()
    shared = shared_dir()
    base = shared / "models" / "all-MiniLM-L6-v2"
    checkpoint = cross_checkpoint(base)
    bundles = {
        "fp32": cross_bundle("minilm-cross-fp32", base, checkpoint, None),
        "int8": cross_bundle("minilm-cross-int8", base, checkpoint, "int8"),
    }
    sts = [(p.a, p.b) for p in read_pairs(shared / "data/stsb-en/dev.tsv").pairs][: args.pairs]
    qp = query_passage_pairs(shared, checkpoint, max(args.passages, 20))
    record: dict[str, object] = {"machine": machine(), "threads": args.threads}
    rows = throughput(
        {"STS-B dev pairs": sts, "query + 256-token passage": qp[: args.passages]},
        bundles,
        checkpoint,
        args,
        record,
    )
    latency = rerank_latency(bundles["fp32"], checkpoint, qp, args, record)
    print(
        f"\nCross-encoder throughput (pairs/s, median of {args.repeats}; ratios vs "
        f"sentence-transformers CrossEncoder; {args.threads} threads; {machine()})\n"
    )
    print(table(HEADERS, rows))
    print("\n/rerank, 1 query x 20 passages of 256 tokens (ms)\n")
    print(table(["engine", "requests", "p50 ms", "p95 ms"], latency))
    save_json("cross", record)


if __name__ == "__main__":
    main()
