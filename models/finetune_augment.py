"""`simsvc label-pairs`: silver pairs for a bi-encoder, labelled by a cross-encoder.

Augmented SBERT (Thakur et al. 2021): a cross-encoder reads both texts at once and scores
pairs better than a bi-encoder, but it cannot index. It can label new pairs, though, and
a bi-encoder trained on the gold pairs plus those silver ones learns some of what the
cross-encoder knows. The new pairs are sampled the paper's way ("semantic search"
sampling): each sentence of the gold train file is paired with its `--top-k` nearest
other sentences of the same file under a bi-encoder, pairs already in the gold file are
left out, and the cross-encoder's probability x 5 becomes the pair's score (its logits of
(a, b) and (b, a) averaged by default, as `/v1/similarity` reads a pair). The output is
an STS TSV (score, sentence1, sentence2) that `simsvc finetune --pairs` takes beside the
gold file. Only train sentences are used: no dev or test text enters training.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.finetune_data import read_pair_data
from models.finetune_models import encode_texts, load_cross, load_encoder, score_pairs, st_pooling
from models.training import quiet_transformers, resolve_device

SCALE = 5.0


def neighbour_pairs(vectors: np.ndarray, top_k: int, block: int = 1024) -> list[tuple[int, int]]:
    """Each row's `top_k` nearest other rows by cosine (unit vectors), as unordered pairs."""
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    for start in range(0, len(vectors), block):
        sims = vectors[start : start + block] @ vectors.T
        for r in range(sims.shape[0]):
            sims[r, start + r] = -np.inf
        top = np.argsort(-sims, axis=1)[:, :top_k]
        for r, row in enumerate(top):
            for j in row.tolist():
                key = (min(start + r, j), max(start + r, j))
                if key not in seen:
                    seen.add(key)
                    out.append(key)
    return out


def label_pairs(
    cross_model: str,
    bi_model: str,
    pairs: list[Path],
    out: Path,
    top_k: int = 3,
    max_length: int = 128,
    device: str = "auto",
    threads: int = 0,
    both_orders: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write the silver STS TSV; returns counts."""
    import torch

    from models.checkpoint_files import training_tokenizer

    quiet_transformers()
    if threads > 0:
        torch.set_num_threads(threads)
    where = resolve_device(device)
    gold = read_pair_data(pairs)
    sentences = list(dict.fromkeys(gold.a + gold.b))
    known = {(a, b) for a, b in zip(gold.a, gold.b, strict=True)}
    known |= {(b, a) for a, b in known}

    bi_tok = training_tokenizer(bi_model)
    bi = load_encoder(bi_model).to(where)
    pooling = st_pooling(bi_model) or "mean"
    say(f"encoding {len(sentences)} train sentences with {Path(bi_model).name} ({pooling})")
    vectors = encode_texts(bi, bi_tok, sentences, pooling, max_length, where, "fp32")
    del bi
    candidates = [
        (sentences[i], sentences[j])
        for i, j in neighbour_pairs(vectors, top_k)
        if (sentences[i], sentences[j]) not in known
    ]
    say(f"scoring {len(candidates)} new pairs with {Path(cross_model).name}")
    cross_tok = training_tokenizer(cross_model)
    cross = load_cross(cross_model, seed=0).to(where)
    a = [c[0] for c in candidates]
    b = [c[1] for c in candidates]
    logits = score_pairs(cross, cross_tok, a, b, max_length, where, "fp32")
    if both_orders:
        logits = (logits + score_pairs(cross, cross_tok, b, a, max_length, where, "fp32")) / 2
    scores = SCALE / (1.0 + np.exp(-logits))
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = ["score\tsentence1\tsentence2"]
    rows += [f"{s:.4f}\t{x}\t{y}" for s, x, y in zip(scores, a, b, strict=True)]
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {
        "sentences": len(sentences),
        "pairs": len(candidates),
        "mean_score": round(float(scores.mean()), 3),
        "both_orders": both_orders,
        "out": str(out),
    }
