"""Server memory over many requests of random lengths (does RSS stay flat?).

    python bench/memory.py --requests 100000
    python bench/memory.py --requests 100000 --no-arena

Mixed traffic: /v1/embeddings with 1-2 texts of 1-100 words and /v1/similarity pairs.
RSS of the server process is sampled every --every requests; the growth is measured from
the first sample after warm-up (10 % of the requests) to the end.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bar_plot, machine, save_json, shared_dir, table
from bench.loadgen import Server, load
from bench.serving import reference_bundle
from models.datasets import read_pairs


def bodies(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """(path, body) pairs of random shapes over real English words."""
    rng = random.Random(seed)
    pairs = read_pairs(shared_dir() / "data/stsb-en/train.tsv").pairs
    words = " ".join(p.a for p in pairs).split()
    out = []
    for _ in range(n):
        if rng.random() < 0.7:
            texts = [
                " ".join(rng.choices(words, k=rng.randint(1, 100)))
                for _ in range(rng.randint(1, 2))
            ]
            out.append(("/v1/embeddings", json.dumps({"input": texts}).encode()))
        else:
            p = rng.choice(pairs)
            out.append(("/v1/similarity", json.dumps({"pairs": [{"a": p.a, "b": p.b}]}).encode()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--port", type=int, default=8792)
    parser.add_argument("--no-arena", action="store_true", help="SIMSVC_ONNX_CPU_ARENA=false")
    args = parser.parse_args()
    traffic = bodies(args.requests)
    env = {"SIMSVC_ONNX_CPU_ARENA": "false"} if args.no_arena else {}
    server = Server(args.bundle or reference_bundle(), args.port, args.threads, env)
    samples: list[tuple[int, float]] = [(0, server.rss_bytes() / 2**20)]
    done = 0
    try:
        for start in range(0, len(traffic), args.every):
            chunk = traffic[start : start + args.every]
            for path in ("/v1/embeddings", "/v1/similarity"):
                part = [b for p, b in chunk if p == path]
                result = load("127.0.0.1", args.port, path, part, args.concurrency)
                assert result.errors == 0, f"{result.errors} errors on {path}"
            done += len(chunk)
            samples.append((done, server.rss_bytes() / 2**20))
            print(f"{done:>7} requests: RSS {samples[-1][1]:.0f} MiB", flush=True)
    finally:
        server.stop()
    warm = next(mb for n, mb in samples if n >= args.requests // 10)
    growth = (samples[-1][1] - warm) / warm
    arena = "off" if args.no_arena else "on"
    print(
        f"\nServer RSS over {args.requests} requests of random lengths (arena {arena}; "
        f"{machine()})\n"
    )
    print(table(["requests", "RSS MiB"], [[n, mb] for n, mb in samples]))
    print(f"\ngrowth after warm-up ({args.requests // 10} requests): {100 * growth:+.1f} %")
    save_json(
        f"memory-arena-{arena}",
        {"machine": machine(), "samples": samples, "growth_after_warmup": growth},
    )
    bar_plot(
        f"memory-arena-{arena}",
        f"Server RSS, arena {arena}",
        [str(n // 1000) + "k" for n, _ in samples],
        {"RSS MiB": [mb for _, mb in samples]},
        "MiB",
    )


if __name__ == "__main__":
    main()
