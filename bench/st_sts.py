"""STS Spearman x100 of sentence-transformers on a checkpoint, with a prompt: the reference a
bundle's dev figures are compared with (same weights, same prompt, cosine of the embeddings).

    python bench/st_sts.py --model ../shared/models/multilingual-e5-small-enzh \
        --prompt "query: " --sts ../shared/data/stsb-en/dev.tsv --sts ../shared/data/stsb-zh/dev.txt

`--tokenizer checkpoint` swaps in the checkpoint's own tokenizer.json (what a bundle serves)
for the one transformers builds; transformers 5 rebuilds XLM-R's tokenizer from its class and
drops the file's normaliser, so the two can differ on full-width characters.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.datasets import read_pairs
from service.runtime.stats import spearman


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt", default="")
    parser.add_argument("--sts", type=Path, action="append", required=True)
    parser.add_argument(
        "--tokenizer", choices=["transformers", "checkpoint", "both"], default="both"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    # fp32, as the bundle computes (the checkpoint is stored fp16; fp16 on CPU is slow and off).
    model = SentenceTransformer(args.model, device="cpu", model_kwargs={"dtype": torch.float32})
    variants = ["transformers", "checkpoint"] if args.tokenizer == "both" else [args.tokenizer]
    results: dict[str, dict[str, float]] = {}
    for variant in variants:
        if variant == "checkpoint":
            from tokenizers import Tokenizer

            own = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
            own.no_padding()
            own.no_truncation()
            hf_tokenizer: Any = model.tokenizer
            hf_tokenizer._tokenizer = own  # transformers sets padding and truncation per call
        for path in args.sts:
            pairs = read_pairs(path)
            sentences = pairs.sentences()
            where = {s: i for i, s in enumerate(sentences)}
            started = time.time()
            vectors = model.encode(
                sentences, prompt=args.prompt, batch_size=64, normalize_embeddings=True
            )
            a = vectors[[where[p.a] for p in pairs.pairs]]
            b = vectors[[where[p.b] for p in pairs.pairs]]
            score = 100 * spearman(np.einsum("ij,ij->i", a, b), pairs.scores())
            results.setdefault(variant, {})[path.name] = round(score, 2)
            print(f"{variant} tokenizer, {path.name}: {score:.2f} ({time.time() - started:.0f} s)")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
