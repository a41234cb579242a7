"""HTTP cost: /v1/similarity single-pair latency at concurrency 1, and /v1/embeddings
throughput at concurrency 1, 8, 32 and 128 (one text per request, so the dynamic batcher
does the batching) against the in-process encoder on the same texts, in one run.

    python bench/serving.py --bundle bench/out/bundles/ref-en-default

Without --bundle it builds the reference English bundle (whitening + head from STS-B train).
The load generator runs on the same machine over loopback.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import OUT, bar_plot, machine, median, save_json, shared_dir, table, timed
from bench.loadgen import Server, load, percentile
from models.datasets import read_pairs
from service.runtime.assembly import EngineOptions, encoder_from_bundle
from service.runtime.bundle import load_bundle
from service.runtime.encoder import encode_texts
from service.runtime.prompts import PromptedEncoder


def reference_bundle() -> Path:
    from models.build import BuildOptions
    from service.cli.default_bundle import cached_bundle

    shared = shared_dir()
    train = shared / "data/stsb-en/train.tsv"
    return cached_bundle(
        BuildOptions(
            model=str(shared / "models/refbert-en-L6-H384"),
            out=OUT / "bundles" / "ref-en-default",
            pooling="first_last_avg",
            whiten_on=[train],
            head_pairs=train,
        ),
        say=print,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--latency-requests", type=int, default=1000)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--spin", action="store_true", help="server with SIMSVC_ONNX_SPIN=true (default off)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server encoder workers, each with threads/workers ORT threads "
        "(the in-process reference keeps --threads)",
    )
    args = parser.parse_args()
    bundle_dir = args.bundle or reference_bundle()
    pairs = read_pairs(shared_dir() / "data/stsb-en/dev.tsv").pairs
    rng = random.Random(0)
    texts = [p.a for p in pairs][: args.texts]

    b = load_bundle(bundle_dir)
    # In-process has no event loop to compete with: spinning is its fastest setting.
    # The texts the server encodes: /v1/embeddings puts the bundle's default prompt first.
    core = PromptedEncoder(
        encoder_from_bundle(b, EngineOptions(threads=args.threads, onnx_spin=True)),
        b.prompts.text(None, "default"),
    )
    encode_texts(core, texts[:64])
    inproc = median(
        [
            len(texts) / timed(lambda: encode_texts(core, texts, max_size=32))
            for _ in range(args.repeats)
        ]
    )
    # What a process that sees only 32 texts at a time can do: the batcher at concurrency 32
    # never holds more, so it cannot sort away padding the way a sort of all texts can.
    windows = [texts[i : i + 32] for i in range(0, len(texts), 32)]
    inproc_windows = median(
        [
            len(texts) / timed(lambda: [encode_texts(core, w, max_size=32) for w in windows])
            for _ in range(args.repeats)
        ]
    )

    env = {"SIMSVC_ENCODER_WORKERS": str(args.workers)}
    if args.spin:
        env["SIMSVC_ONNX_SPIN"] = "true"
    server = Server(bundle_dir, args.port, max(1, args.threads // args.workers), env)
    try:
        sim_bodies = [
            json.dumps({"pairs": [{"a": p.a, "b": p.b}]}).encode()
            for p in rng.choices(pairs, k=args.latency_requests)
        ]
        load("127.0.0.1", args.port, "/v1/similarity", sim_bodies[:50], 1)  # warm-up
        sim = load("127.0.0.1", args.port, "/v1/similarity", sim_bodies, 1)
        lat = [x * 1000 for x in sim.latencies]
        latency_rows = [
            [
                "/v1/similarity, 1 pair",
                1,
                sim.requests,
                percentile(lat, 50),
                percentile(lat, 95),
                percentile(lat, 99),
                sim.errors,
            ]
        ]
        emb_bodies = [json.dumps({"input": t, "model": "simsvc"}).encode() for t in texts]
        rates = [inproc]
        rows: list[list[object]] = [
            ["in-process, all texts sorted (batch 32)", "-", inproc, "100 %", "-", "-"],
            [
                "in-process, windows of 32 in order",
                "-",
                inproc_windows,
                f"{100 * inproc_windows / inproc:.0f} %",
                "100 %",
                "-",
            ],
        ]
        record: dict[str, object] = {
            "machine": machine(),
            "threads": args.threads,
            "workers": args.workers,
            "bundle": b.manifest.source.model,
            "quantization": bool(b.manifest.quantization),
            "inprocess_texts_per_s": inproc,
            "inprocess_windows32_texts_per_s": inproc_windows,
            "similarity_ms": lat,
        }
        for concurrency in (1, 8, 32, 128):
            runs = [
                load("127.0.0.1", args.port, "/v1/embeddings", emb_bodies, concurrency)
                for _ in range(args.repeats)
            ]
            rate = median([r.requests / r.seconds for r in runs])
            rates.append(rate)
            p50 = median([percentile(r.latencies, 50) * 1000 for r in runs])
            rows.append(
                [
                    "/v1/embeddings, 1 text/request",
                    concurrency,
                    rate,
                    f"{100 * rate / inproc:.0f} %",
                    f"{100 * rate / inproc_windows:.0f} %",
                    p50,
                ]
            )
            record[f"embeddings_c{concurrency}"] = {
                "texts_per_s": rate,
                "p50_ms": p50,
                "errors": sum(r.errors for r in runs),
            }
        record["rss_after_bytes"] = server.rss_bytes()
    finally:
        server.stop()
    print(
        f"\nHTTP on loopback ({args.threads} threads, {machine()}; bundle "
        f"{b.manifest.source.model}{' int8' if b.manifest.quantization else ''})\n"
    )
    print(
        table(
            ["route", "concurrency", "requests", "p50 ms", "p95 ms", "p99 ms", "errors"],
            latency_rows,
        )
    )
    print()
    print(
        table(["path", "concurrency", "texts/s", "of sorted", "of windows of 32", "p50 ms"], rows)
    )
    save_json("serving", record)
    bar_plot(
        "serving",
        "Embeddings through HTTP vs in-process",
        ["in-process", "in-proc. windows", "c=1", "c=8", "c=32", "c=128"],
        {"texts/s": [rates[0], inproc_windows, *rates[1:]]},
        "texts / second",
    )


if __name__ == "__main__":
    main()
