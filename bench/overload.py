"""Overload on loopback: many clients with time-outs flood /embed with 32-text requests while
a one-pair /v1/similarity probe measures what a small request waits. Prints goodput (texts
answered 200 per second), the statuses, the client time-outs, the texts the server encoded
for clients that had gone, and the probe's latency.

Runs each given source tree's server in turn under the same load, so a branch is measured
side by side with another checkout (for example main, exported with `git archive`):

    .venv/bin/python bench/overload.py --src before=/tmp/main-src --src after=.

The default model is all-MiniLM-L6-v2 from ../shared (a bundle built once into bench/out).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, bundle, machine, median, save_json, shared_dir, table
from bench.loadgen import Server, percentile


@dataclass
class Run:
    statuses: dict[int, int] = field(default_factory=dict)
    timeouts: int = 0
    other_errors: int = 0
    answered_texts: int = 0
    probes: list[float] = field(default_factory=list)
    probe_queue: list[float] = field(default_factory=list)
    """The probe's x-queue-time: seconds its texts waited for the encoder, server-side."""
    probe_failures: int = 0
    missing_retry_after: int = 0


def sentences(n: int, seed: int = 0) -> list[str]:
    """STS-B train sentences (the shared data), shuffled."""
    path = shared_dir() / "data" / "stsb-en" / "train.tsv"
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    texts = [r[1] for r in rows if len(r) > 2] + [r[2] for r in rows if len(r) > 2]
    random.Random(seed).shuffle(texts)
    return texts[:n]


async def drive(url: str, args: argparse.Namespace, texts: list[str]) -> Run:
    run = Run()
    until = time.monotonic() + args.seconds
    limits = httpx.Limits(max_connections=args.concurrency + 8, max_keepalive_connections=None)

    async def client(worker: int, http: httpx.AsyncClient) -> None:
        n = worker
        while time.monotonic() < until:
            start = (n * args.texts) % (len(texts) - args.texts)
            body = {"inputs": texts[start : start + args.texts]}
            n += args.concurrency
            try:
                resp = await http.post("/embed", json=body, timeout=args.client_timeout)
            except httpx.TimeoutException:
                run.timeouts += 1
                continue
            except httpx.HTTPError:
                run.other_errors += 1
                await asyncio.sleep(0.1)
                continue
            run.statuses[resp.status_code] = run.statuses.get(resp.status_code, 0) + 1
            if resp.status_code == 200 and time.monotonic() <= until:
                run.answered_texts += args.texts
            elif resp.status_code == 429:
                retry = resp.headers.get("retry-after", "")
                if not retry.isdigit():
                    run.missing_retry_after += 1
                # A polite client: waits what the server asks, at most until the run ends.
                await asyncio.sleep(min(float(retry or 1), max(0.0, until - time.monotonic())))

    async def probe(http: httpx.AsyncClient) -> None:
        pair = {"pairs": [{"a": "A man is playing a guitar.", "b": "A man plays the guitar."}]}
        await asyncio.sleep(2.0)  # into the overload
        while time.monotonic() < until:
            sent = time.monotonic()
            try:
                resp = await http.post("/v1/similarity", json=pair, timeout=120)
                if resp.status_code == 200:
                    run.probes.append(time.monotonic() - sent)
                    run.probe_queue.append(float(resp.headers.get("x-queue-time", "nan")) / 1000)
                else:
                    run.probe_failures += 1
            except httpx.HTTPError:
                run.probe_failures += 1
            await asyncio.sleep(args.probe_interval)

    async with (
        httpx.AsyncClient(base_url=url, limits=limits) as http,
        httpx.AsyncClient(base_url=url) as probe_http,
    ):
        await asyncio.gather(*(client(w, http) for w in range(args.concurrency)), probe(probe_http))
    return run


def encoded_texts(url: str) -> float:
    """Texts the encoder ran (the batch-size histogram's sum)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "simsvc_batch_size_sum":
                return float(sample.value)
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", default=[], help="NAME=PATH of a source tree")
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--client-timeout", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--probe-interval", type=float, default=0.5)
    parser.add_argument("--port", type=int, default=8771)
    args = parser.parse_args()
    sources = [s.split("=", 1) for s in args.src] or [["this", str(REPO)]]
    model = str(shared_dir() / "models" / "all-MiniLM-L6-v2")
    path = args.bundle or bundle("minilm-mean", model, pooling="mean")
    texts = sentences(4096)
    rows, raw = [], {}
    for name, src in sources:
        src_path = Path(src).resolve()
        env = {"PYTHONPATH": str(src_path), "SIMSVC_DATA_DIR": str(REPO / "bench" / "out" / "data")}
        server = Server(path, args.port, threads=0, env=env, cwd=src_path)
        url = f"http://127.0.0.1:{args.port}"
        try:
            before = encoded_texts(url)
            started = time.monotonic()
            run = asyncio.run(drive(url, args, texts))
            elapsed = time.monotonic() - started
            time.sleep(2)
            encoded = encoded_texts(url) - before
        finally:
            server.stop()
        wasted = max(0.0, encoded - run.answered_texts - len(run.probes) * 2)
        probes = run.probes or [float("nan")]
        queue = run.probe_queue or [float("nan")]
        rows.append(
            [
                name,
                f"{run.answered_texts / elapsed:.0f}",
                " ".join(f"{k}:{v}" for k, v in sorted(run.statuses.items())),
                run.timeouts,
                f"{encoded:.0f}",
                f"{wasted:.0f}",
                f"{median(probes) * 1000:.0f}",
                f"{percentile(probes, 99) * 1000:.0f}",
                f"{max(probes) * 1000:.0f}",
                f"{median(queue) * 1000:.0f} / {percentile(queue, 99) * 1000:.0f}",
                run.probe_failures,
                run.missing_retry_after,
            ]
        )
        raw[name] = run.__dict__ | {"seconds": elapsed, "encoded": encoded}
    print(
        f"# {machine()}; c={args.concurrency} x {args.texts} texts, client timeout "
        f"{args.client_timeout:g} s, {args.seconds:g} s, probe every {args.probe_interval:g} s"
    )
    print(
        table(
            [
                "server",
                "goodput texts/s",
                "statuses",
                "client time-outs",
                "texts encoded",
                "encoded for nobody",
                "probe p50 ms",
                "probe p99 ms",
                "probe max ms",
                "probe queue p50 / p99 ms",
                "probe failures",
                "429 without Retry-After",
            ],
            rows,
        )
    )
    save_json("overload", raw)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
