"""Run by bench/encoder.py with infinity-emb's own Python (it needs numpy<2 and an older
transformers, so it lives in a separate venv). Measures infinity's ONNX (optimum) engine on
the given texts and prints one JSON line: {"rates": [...], "vectors": [[...], ...]}.

    python bench/peer_infinity.py MODEL_DIR TEXTS.json BATCH REPEATS THREADS
    python bench/peer_infinity.py --export CHECKPOINT MODEL_DIR

`--export` runs optimum's own ONNX export (what `optimum-cli export onnx` does), with
torch's TorchScript exporter: optimum 1.24 predates torch's switch to the dynamo exporter.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time


async def main(model: str, texts: list[str], batch: int, repeats: int) -> dict[str, object]:
    from infinity_emb import AsyncEmbeddingEngine, EngineArgs

    args = EngineArgs(
        model_name_or_path=model,
        engine="optimum",
        device="cpu",
        batch_size=batch,
        model_warmup=False,
        pooling_method="mean",
    )
    engine = AsyncEmbeddingEngine.from_args(args)
    rates = []
    async with engine:
        vectors, _ = await engine.embed(sentences=texts[:16])
        for _ in range(repeats):
            started = time.perf_counter()
            if batch == 1:
                for text in texts:
                    await engine.embed(sentences=[text])
            else:
                await engine.embed(sentences=texts)
            rates.append(len(texts) / (time.perf_counter() - started))
    return {"rates": rates, "vectors": [list(map(float, v)) for v in vectors]}


def export(checkpoint: str, out: str) -> None:
    import functools

    import torch
    from optimum.exporters.onnx import main_export

    torch.onnx.export = functools.partial(torch.onnx.export, dynamo=False)
    main_export(checkpoint, output=out, task="feature-extraction")


if __name__ == "__main__":
    if sys.argv[1] == "--export":
        export(sys.argv[2], sys.argv[3])
        sys.exit(0)
    model_dir, texts_file, batch_size, repeat_count, threads = sys.argv[1:6]
    os.environ["OMP_NUM_THREADS"] = threads
    with open(texts_file) as fh:
        items = json.load(fh)
    print(json.dumps(asyncio.run(main(model_dir, items, int(batch_size), int(repeat_count)))))
