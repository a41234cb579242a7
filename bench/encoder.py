"""Encoder throughput: this project (fp32, int8) against sentence-transformers, same
checkpoint, same threads, same inputs, measured in one run.

    python bench/encoder.py                   # all models
    python bench/encoder.py --models ref-en --repeats 3
    python bench/encoder.py --models e5-small-enzh --quantize int8-channel  # the default

Engines run interleaved, `--repeats` times; each figure is the median, and each ratio is the
median of the per-repeat ratios (so a noisy moment hits both sides of a pair alike).
Both sides sort texts by length and pad per batch (sentence-transformers does this too).
"""

from __future__ import annotations

import argparse
import lzma
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    OUT,
    bar_plot,
    bundle,
    machine,
    median,
    random_checkpoint,
    save_json,
    shared_dir,
    table,
    timed,
)
from models.datasets import read_pairs
from service.runtime.assembly import EngineOptions, encoder_from_bundle
from service.runtime.bundle import load_bundle
from service.runtime.encoder import OnnxEncoder, encode_texts

Encode = Callable[[list[str]], np.ndarray]
MAX_LENGTH = 256


def sentences(path: Path, n: int) -> list[str]:
    return read_pairs(path).sentences()[:n]


def passages(corpus: Path, n: int, min_chars: int) -> list[str]:
    """Runs of consecutive paragraphs long enough to fill 256 tokens (then truncated)."""
    out: list[str] = []
    buf = ""
    with lzma.open(corpus, "rt", encoding="utf-8") as fh:
        for line in fh:
            buf = f"{buf} {line.strip()}".strip()
            if len(buf) >= min_chars:
                out.append(buf)
                buf = ""
                if len(out) == n:
                    break
    return out


def ours(bundle_dir: Path, threads: int, batch: int) -> tuple[Encode, OnnxEncoder]:
    b = load_bundle(bundle_dir)
    core = encoder_from_bundle(b, EngineOptions(threads=threads, onnx_spin=True))

    def run(texts: list[str]) -> np.ndarray:
        return encode_texts(core, texts, max_tokens=1 << 30, max_size=batch)["mean"]

    return run, core


def sentence_transformers(checkpoint: Path, threads: int, batch: int) -> Encode:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer

    torch.set_num_threads(threads)
    word = Transformer(
        str(checkpoint), max_seq_length=MAX_LENGTH, model_kwargs={"dtype": torch.float32}
    )
    model = SentenceTransformer(
        modules=[word, Pooling(word.get_embedding_dimension(), "mean")],
        device="cpu",
    )
    model.eval()

    def run(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(texts, batch_size=batch, convert_to_numpy=True))

    return run


def infinity_peer(
    python: str, checkpoint: Path, name: str, texts: list[str], batch: int, threads: int
) -> dict[str, object] | None:
    """infinity-emb's ONNX engine on the same texts, in its own venv (None when unavailable)."""
    import json
    import os
    import subprocess
    import tempfile

    model_dir = OUT / "infinity" / name
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    if not (model_dir / "model.onnx").is_file():
        export = subprocess.run(
            [
                python,
                str(Path(__file__).with_name("peer_infinity.py")),
                "--export",
                str(checkpoint),
                str(model_dir),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if export.returncode != 0:
            print(f"  infinity-emb: optimum export failed: {export.stderr[-500:]}", flush=True)
            return None
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(texts, fh)
    try:
        out = subprocess.run(
            [
                python,
                str(Path(__file__).with_name("peer_infinity.py")),
                str(model_dir),
                fh.name,
                str(batch),
                "1",
                str(threads),
            ],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as exc:
        print(f"  infinity-emb failed: {exc.stderr[-500:]}", flush=True)
        return None
    finally:
        os.unlink(fh.name)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return float(cos.min())


def run_model(
    name: str,
    checkpoint: Path,
    texts: dict[str, list[str]],
    args: argparse.Namespace,
    rows: list[list[object]],
    record: dict[str, object],
    series: dict[str, list[float]],
) -> None:
    fp32_dir = bundle(f"{name}-fp32", str(checkpoint), max_length=MAX_LENGTH, threads=args.threads)
    int8_dir = bundle(
        f"{name}-{args.quantize}",
        str(checkpoint),
        quantize=args.quantize,
        max_length=MAX_LENGTH,
        threads=args.threads,
    )
    # Every engine reads what the service encodes for a pair: the bundle's query prompt
    # first (none for a bundle without prompts), so throughput and agreement are the served.
    prompt = load_bundle(fp32_dir).prompts.text(None, "query")
    for kind, items in texts.items():
        for batch in (1, 32):
            n = len(items) if batch == 32 else max(8, len(items) // 4)
            subset = [prompt + t for t in items[:n]]
            engines: dict[str, Encode] = {}
            engines["simsvc fp32"], _ = ours(fp32_dir, args.threads, batch)
            engines["simsvc int8"], _ = ours(int8_dir, args.threads, batch)
            engines["sentence-transformers"] = sentence_transformers(
                checkpoint, args.threads, batch
            )
            vectors = {k: fn(subset[:16]) for k, fn in engines.items()}  # warm-up + outputs
            rates: dict[str, list[float]] = {k: [] for k in engines}
            peer_rates: list[float] = []
            for _ in range(args.repeats):
                for k, fn in engines.items():
                    rates[k].append(n / timed(partial(fn, subset)))
                if args.infinity_python:  # its own process, in the same round
                    peer = infinity_peer(
                        args.infinity_python, checkpoint, name, subset, batch, args.threads
                    )
                    if peer is not None:
                        peer_rates.extend(peer["rates"])  # type: ignore[arg-type]
                        vectors["infinity"] = np.asarray(peer["vectors"], dtype=np.float32)
            if peer_rates:
                rates["infinity-emb onnx"] = peer_rates
            st = rates["sentence-transformers"]
            ratio = {
                k: median([a / b for a, b in zip(rates[k], st, strict=True)])
                for k in ("simsvc fp32", "simsvc int8")
            }
            equal = min_cosine(vectors["simsvc fp32"], vectors["sentence-transformers"])
            int8_cos = min_cosine(vectors["simsvc int8"], vectors["simsvc fp32"])
            inf = median(peer_rates) if peer_rates else float("nan")
            rows.append(
                [
                    name,
                    kind,
                    batch,
                    n,
                    median(st),
                    median(rates["simsvc fp32"]),
                    median(rates["simsvc int8"]),
                    inf,
                    f"{ratio['simsvc fp32']:.2f}x",
                    f"{ratio['simsvc int8']:.2f}x",
                    f"{median(rates['simsvc fp32']) / inf:.2f}x" if peer_rates else "-",
                    f"{equal:.6f}",
                    f"{int8_cos:.4f}",
                ]
            )
            for k in rates:
                series.setdefault(k, []).append(median(rates[k]))
            record[f"{name}/{kind}/b{batch}"] = {
                "texts": n,
                "rates": rates,
                "ratio_vs_st": ratio,
                "min_cos_fp32_vs_st": equal,
                "min_cos_int8_vs_fp32": int8_cos,
            }
            print(table(HEADERS, rows[-1:]), flush=True)


HEADERS = [
    "model",
    "inputs",
    "batch",
    "texts",
    "sent-tr /s",
    "fp32 /s",
    "int8 /s",
    "infinity /s",
    "fp32 ratio",
    "int8 ratio",
    "fp32 vs infinity",
    "fp32≈ST cos",
    "int8≈fp32 cos",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="ref-en,minilm,bert-base-chinese")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--passages", type=int, default=96)
    parser.add_argument(
        "--quantize", default="int8", choices=["int8", "int8-channel"], help="the int8 column"
    )
    parser.add_argument("--infinity-python", help="python of a venv with infinity-emb[optimum]")
    args = parser.parse_args()
    shared = shared_dir()
    en = {
        "STS-B sentences": sentences(shared / "data/stsb-en/dev.tsv", args.sentences),
        "256-token passages": passages(
            shared / "data/corpus/en-wiki-gutenberg-sample.txt.xz", args.passages, 1800
        ),
    }
    zh = {
        "STS-B-zh sentences": sentences(shared / "data/stsb-zh/dev.txt", args.sentences // 4),
        "256-token passages": passages(
            shared / "data/corpus/zh-wiki-sample.txt.xz", max(8, args.passages // 4), 400
        ),
    }
    configs = shared / "models" / "configs-only"
    # multilingual-e5 reads text behind its prompt; both sides get the same prompted texts
    e5 = {
        "STS-B sentences": [f"query: {t}" for t in en["STS-B sentences"][: args.sentences // 2]],
        "STS-B-zh sentences": [
            f"query: {t}" for t in sentences(shared / "data/stsb-zh/dev.txt", args.sentences // 2)
        ],
    }
    models: dict[str, tuple[Callable[[], Path], dict[str, list[str]]]] = {
        "ref-en": (lambda: shared / "models" / "refbert-en-L6-H384", en),
        "minilm": (lambda: random_checkpoint("minilm", configs / "all-MiniLM-L6-v2"), en),
        "bert-base-chinese": (
            lambda: random_checkpoint("bert-base-chinese", configs / "bert-base-chinese"),
            zh,
        ),
        "e5-small-enzh": (lambda: shared / "models" / "multilingual-e5-small-enzh", e5),
    }
    rows: list[list[object]] = []
    series: dict[str, list[float]] = {}
    record: dict[str, object] = {
        "machine": machine(),
        "threads": args.threads,
        "repeats": args.repeats,
    }
    for name in args.models.split(","):
        make, texts = models[name]
        run_model(name, make(), texts, args, rows, record, series)
    print(
        f"\nEncoder throughput (texts/s, median of {args.repeats}; ratios vs "
        f"sentence-transformers; {args.threads} threads; {machine()})\n"
    )
    print(table(HEADERS, rows))
    save_json("encoder", record)
    groups = [f"{r[0]}\n{r[1]}\nb{r[2]}" for r in rows]
    bar_plot(
        "encoder", f"Encoder throughput, {args.threads} threads", groups, series, "texts / second"
    )


if __name__ == "__main__":
    main()
