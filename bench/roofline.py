"""How close the encoder gets to the machine: achieved GFLOP/s of a full forward pass
against the fp32 matrix-multiply peak measured by the same script, same threads.

    python bench/roofline.py

FLOPs are counted from the config for full (unpadded) batches: per layer and sequence,
2*S*(4h^2 + 2hf) for the projections and feed-forward plus 4*S^2*h for attention.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
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
from service.runtime.bundle import load_bundle
from service.runtime.encoder import OnnxEncoder, Tokenized


def matmul_peak(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """fp32 GFLOP/s of an n x n x n MatMul in ONNX Runtime (the encoder's own kernels)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    b = rng.standard_normal((n, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "mm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        [onnx.numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    a = rng.standard_normal((n, n)).astype(np.float32)
    session.run(None, {"a": a})
    seconds = median([timed(lambda: session.run(None, {"a": a})) for _ in range(repeats)])
    return 2 * n**3 / seconds / 1e9


def encoder_flops(layers: int, hidden: int, ffn: int, seq: int, batch: int) -> float:
    per_layer = 2 * seq * (4 * hidden * hidden + 2 * hidden * ffn) + 4 * seq * seq * hidden
    return float(batch * layers * per_layer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import json

    shared = shared_dir()
    models = {
        "ref-en (6x384)": shared / "models/refbert-en-L6-H384",
        "bert-base-chinese (12x768)": random_checkpoint(
            "bert-base-chinese", shared / "models/configs-only/bert-base-chinese"
        ),
    }
    peak = matmul_peak(args.threads)
    rows: list[list[object]] = []
    record: dict[str, object] = {
        "machine": machine(),
        "threads": args.threads,
        "matmul_peak_gflops": peak,
    }
    for name, ckpt in models.items():
        cfg = json.loads((ckpt / "config.json").read_text())
        for quant in (None, "int8"):
            slug = ckpt.name + ("-int8" if quant else "-fp32")
            b = load_bundle(
                bundle(
                    f"roofline-{slug}",
                    str(ckpt),
                    quantize=quant,
                    max_length=256,
                    threads=args.threads,
                )
            )
            core = OnnxEncoder(b.model_path, b.tokenizer_path, 256, threads=args.threads)
            for seq, batch in ((128, 32), (256, 16)):
                items = [
                    Tokenized([101] + [1000 + (i * 7 + j) % 5000 for j in range(seq - 2)] + [102])
                    for i in range(batch)
                ]
                core.infer(items)
                seconds = median([timed(partial(core.infer, items)) for _ in range(args.repeats)])
                flops = encoder_flops(
                    cfg["num_hidden_layers"],
                    cfg["hidden_size"],
                    cfg["intermediate_size"],
                    seq,
                    batch,
                )
                gflops = flops / seconds / 1e9
                rows.append(
                    [
                        name,
                        quant or "fp32",
                        f"{batch}x{seq}",
                        seconds * 1000,
                        gflops,
                        f"{100 * gflops / peak:.0f} %",
                    ]
                )
                record[f"{name}/{quant or 'fp32'}/{batch}x{seq}"] = {
                    "seconds": seconds,
                    "gflops": gflops,
                }
    print(
        f"\nfp32 MatMul peak (ONNX Runtime, {args.threads} threads): {peak:.0f} GFLOP/s; "
        f"{machine()}\n"
    )
    print(table(["model", "graph", "batch x tokens", "ms", "GFLOP/s", "of fp32 peak"], rows))
    save_json("roofline", record)
    shapes = sorted({str(r[2]) for r in rows})
    pairs = dict.fromkeys((str(r[0]).split(" (")[0], r[1]) for r in rows)
    groups = [f"{name} {graph}" for name, graph in pairs]
    series = {"fp32 MatMul peak": [peak] * len(groups)}
    for shape in shapes:
        series[shape] = [float(r[4]) for r in rows if r[2] == shape]  # type: ignore[arg-type]
    bar_plot("roofline", "Achieved GFLOP/s against the fp32 GEMM peak", groups, series, "GFLOP/s")


if __name__ == "__main__":
    main()
