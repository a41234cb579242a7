"""The BERT pretraining network (MLM + NSP heads): its tokenizer ids, loading, and losses.

The MLM head runs on the chosen positions only (as BERT's original code gathers them), not
on every position: on CPU the 30 k-way output layer over all tokens would dominate a step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.pretrain_data import IGNORE, Batch, Encode, TokenInfo, collate, mask_batch
from models.training import autocast, quiet_transformers


def token_info(tokenizer: Any, vocab_size: int) -> TokenInfo:
    """The ids masking and instance creation need, from a Hugging Face tokenizer."""
    ids: dict[str, Any] = {
        name: getattr(tokenizer, f"{name}_token_id", None) for name in ("cls", "sep", "pad", "mask")
    }
    if any(v is None for v in ids.values()):
        raise ValueError(f"the tokenizer lacks special tokens for pretraining: {ids}")
    size = len(tokenizer)
    if size > vocab_size:
        raise ValueError(f"tokenizer has {size} tokens but the model's vocabulary is {vocab_size}")
    special = np.asarray(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    return TokenInfo(
        cls_id=int(ids["cls"]),
        sep_id=int(ids["sep"]),
        pad_id=int(ids["pad"]),
        mask_id=int(ids["mask"]),
        special_ids=special,
        random_ids=np.setdiff1d(np.arange(size, dtype=np.int64), special),
        word_start=np.asarray([not str(p).startswith("##") for p in pieces], dtype=np.bool_),
    )


def text_encoder(tokenizer: Any) -> Encode:
    """Batch tokenization without special tokens, truncation or padding (the Rust backend)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()

    def encode(texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]

    return encode


def require_bert(config: Any, where: str) -> None:
    """Pretraining's heads are BERT's: refuse other model types up front."""
    if getattr(config, "model_type", None) != "bert":
        raise ValueError(
            f"{where}: pretraining needs a BERT model (MLM + NSP heads), "
            f"got model_type {getattr(config, 'model_type', None)!r}"
        )


def load_pretraining_checkpoint(model: str) -> tuple[Any, list[str]]:
    """`BertForPreTraining` in fp32 from a checkpoint, and the head weights it lacked
    (those start from random values)."""
    import torch
    from transformers import AutoConfig, BertForPreTraining

    quiet_transformers()
    require_bert(AutoConfig.from_pretrained(model), model)
    loaded: Any = BertForPreTraining.from_pretrained(
        model, dtype=torch.float32, output_loading_info=True
    )
    net, info = loaded
    missing = sorted(info.get("missing_keys", []))
    encoder_missing = [k for k in missing if not k.startswith("cls.")]
    if encoder_missing:
        raise ValueError(f"{model}: encoder weights missing from the checkpoint: {encoder_missing}")
    return net.float(), missing


def _tensors(batch: Batch, device: Any) -> dict[str, Any]:
    import torch

    return {
        name: torch.from_numpy(getattr(batch, name)).to(device)
        for name in (
            "input_ids",
            "token_type_ids",
            "attention_mask",
            "next_sentence_label",
            "labels",
        )
    }


def _losses(net: Any, t: dict[str, Any]) -> dict[str, Any]:
    """MLM and NSP losses, and correct-prediction counts, with the MLM head run only on the
    chosen positions."""
    import torch.nn.functional as F

    out = net.bert(
        input_ids=t["input_ids"],
        token_type_ids=t["token_type_ids"],
        attention_mask=t["attention_mask"],
    )
    chosen = t["labels"] != IGNORE
    targets = t["labels"][chosen]
    mlm_logits = net.cls.predictions(out.last_hidden_state[chosen]).float()
    nsp_logits = net.cls.seq_relationship(out.pooler_output).float()
    n = int(targets.numel())
    mlm_sum = F.cross_entropy(mlm_logits, targets, reduction="sum")
    nsp = F.cross_entropy(nsp_logits, t["next_sentence_label"])
    return {
        "mlm": mlm_sum / max(n, 1),
        "mlm_sum": mlm_sum,
        "nsp": nsp,
        "masked": n,
        "mlm_correct": int((mlm_logits.argmax(-1) == targets).sum()),
        "nsp_correct": int((nsp_logits.argmax(-1) == t["next_sentence_label"]).sum()),
        "rows": int(nsp_logits.shape[0]),
    }


def batch_loss(net: Any, batch: Batch, device: Any, precision: str) -> tuple[Any, dict[str, float]]:
    """The training loss of a masked batch (MLM + NSP) and its figures for the log."""
    with autocast(device, precision):
        r = _losses(net, _tensors(batch, device))
        loss = r["mlm"] + r["nsp"]
    return loss, {
        "mlm": float(r["mlm"].detach()),
        "nsp": float(r["nsp"].detach()),
        "mlm_acc": r["mlm_correct"] / max(r["masked"], 1),
        "nsp_acc": r["nsp_correct"] / r["rows"],
    }


def evaluate_batches(
    net: Any, batches: list[Batch], device: Any, precision: str = "fp32"
) -> dict[str, float]:
    """MLM accuracy over the chosen tokens, NSP accuracy over the pairs, and both losses."""
    import torch

    was_training = net.training
    net.eval()
    masked = mlm_correct = rows = nsp_correct = 0
    mlm_sum = nsp_sum = 0.0
    with torch.no_grad(), autocast(device, precision):
        for batch in batches:
            r = _losses(net, _tensors(batch, device))
            masked += r["masked"]
            mlm_correct += r["mlm_correct"]
            rows += r["rows"]
            nsp_correct += r["nsp_correct"]
            mlm_sum += float(r["mlm_sum"])
            nsp_sum += float(r["nsp"]) * r["rows"]
    net.train(was_training)
    return {
        "instances": rows,
        "masked_tokens": masked,
        "mlm_acc": mlm_correct / max(masked, 1),
        "nsp_acc": nsp_correct / max(rows, 1),
        "mlm_loss": mlm_sum / max(masked, 1),
        "nsp_loss": nsp_sum / max(rows, 1),
    }


def masked_batches(
    instances: list[Any], tokens: TokenInfo, batch_size: int, rng: np.random.Generator
) -> list[Batch]:
    """Instances collated and masked in batches of `batch_size` (the last may be short)."""
    return [
        mask_batch(collate(instances[i : i + batch_size], tokens), tokens, rng)
        for i in range(0, len(instances), batch_size)
    ]
