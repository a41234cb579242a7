"""`simsvc evaluate-mlm`, and how pretraining reports its held-out figures.

A checkpoint's MLM and NSP accuracy are measured on the training recipe's own instances
and masking (seeded, fp32), beside the held-out figures its training recorded, if any.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from models.export_onnx import require_build_extra
from models.pretrain_data import POOL_CHARS, stream_instances
from models.pretrain_model import (
    evaluate_batches,
    load_pretraining_checkpoint,
    masked_batches,
    text_encoder,
    token_info,
)
from models.training import resolve_device

LOG_FILE = "pretrain_log.json"
"""A pretraining run's card: its settings, loss log and held-out figures."""


def heldout_line(figures: dict[str, float]) -> str:
    """One line for a held-out evaluation during training."""
    return (
        f"held-out at step {int(figures['step'])}: MLM accuracy {100 * figures['mlm_acc']:.1f} %, "
        f"NSP accuracy {100 * figures['nsp_acc']:.1f} % ({int(figures['instances'])} pairs)"
    )


def recorded_heldout(model_dir: Path) -> dict[str, float] | None:
    """The held-out MLM/NSP accuracy a checkpoint's own training recorded beside it, if any
    (this pipeline's `pretrain_log.json`, or a `training_log.json` with an `eval` block)."""
    ours = model_dir / LOG_FILE
    if ours.is_file():
        figures = json.loads(ours.read_text()).get("heldout") or []
        if figures:
            last = figures[-1]
            return {"mlm_acc": float(last["mlm_acc"]), "nsp_acc": float(last["nsp_acc"])}
    theirs = model_dir / "training_log.json"
    if theirs.is_file():
        block = json.loads(theirs.read_text()).get("eval") or {}
        if "heldout_mlm_acc" in block and "heldout_nsp_acc" in block:
            return {
                "mlm_acc": float(block["heldout_mlm_acc"]),
                "nsp_acc": float(block["heldout_nsp_acc"]),
            }
    return None


def evaluate_mlm(
    model: str,
    corpus: list[Path],
    instances: int = 4000,
    max_length: int = 128,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "auto",
    pool_chars: int = POOL_CHARS,
    threads: int = 0,
) -> dict[str, Any]:
    """MLM and NSP accuracy of a checkpoint on the first `instances` pairs of a corpus (the
    training recipe's instances and masking, seeded; fp32)."""
    require_build_extra()
    import torch
    from transformers import AutoTokenizer

    if threads > 0:
        torch.set_num_threads(threads)
    net, missing = load_pretraining_checkpoint(model)
    if missing:
        raise ValueError(f"{model} has no trained MLM/NSP heads (missing: {', '.join(missing)})")
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokens = token_info(tokenizer, int(net.config.vocab_size))
    sample = list(
        islice(
            stream_instances(
                corpus,
                text_encoder(tokenizer),
                tokens.word_start,
                max_length,
                seed,
                pool_chars=pool_chars,
            ),
            instances,
        )
    )
    if not sample:
        raise ValueError("the corpus yields no instances")
    where = resolve_device(device)
    net.to(where)
    batches = masked_batches(sample, tokens, batch_size, np.random.default_rng([seed, 1]))
    figures = evaluate_batches(net, batches, where)
    own = recorded_heldout(Path(model)) if Path(model).is_dir() else None
    return {
        "model": model,
        "corpus": [Path(p).name for p in corpus],
        "max_length": max_length,
        "seed": seed,
        "random_next_share": float(np.mean([x.is_random_next for x in sample])),
        **figures,
        "own_heldout": own,
    }


def format_mlm(figures: dict[str, Any]) -> str:
    """One readable block for `simsvc evaluate-mlm`."""
    lines = [
        f"{figures['model']} on {', '.join(figures['corpus'])}: {figures['instances']} pairs "
        f"(max length {figures['max_length']}, seed {figures['seed']}), "
        f"{figures['masked_tokens']} masked tokens",
        f"  MLM accuracy {100 * figures['mlm_acc']:.1f} %  (loss {figures['mlm_loss']:.3f})",
        f"  NSP accuracy {100 * figures['nsp_acc']:.1f} %  (loss {figures['nsp_loss']:.3f})",
    ]
    own = figures.get("own_heldout")
    if own:
        lines.append(
            f"  its own held-out split: MLM {100 * own['mlm_acc']:.1f} %, "
            f"NSP {100 * own['nsp_acc']:.1f} %"
        )
    return "\n".join(lines)
