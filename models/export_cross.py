"""Export a Hugging Face cross-encoder (a sequence classifier) to ONNX, and prove parity.

The checkpoint is a standard `AutoModelForSequenceClassification` with one label (a logit;
sigmoid gives the model's probability) or two (softmax[1]; served as the logit difference),
as `simsvc finetune --objective cross` writes it and as hub cross-encoders such as
`cross-encoder/ms-marco-MiniLM-L-6-v2` are. The graph takes `input_ids`, `attention_mask`
(and `token_type_ids` when the model has them) with dynamic batch and sequence axes, and
returns the logits only. The pair template (BERT's `[CLS] a [SEP] b [SEP]` with segment ids,
XLM-R's `<s> a </s></s> b </s>` all type 0) is the checkpoint tokenizer.json's post-processor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from models.export_onnx import (
    PARITY_TEXTS,
    check_vocab_fits,
    checkpoint_tokenizer,
    forward_kwargs,
    load_fast_tokenizer,
    save_runtime_tokenizer,
    takes_token_types,
    tokenizer_pad_id,
    trace_to_onnx,
)
from service.runtime.bundle import CROSS_MODEL_FILE, CROSS_TOKENIZER_FILE, CrossParity
from service.runtime.cross import LOGITS, OnnxCrossEncoder
from service.runtime.encoder import Tokenized, pad_batch, pad_type_ids

CARD_FILE = "card.json"
"""What `simsvc finetune` writes beside a checkpoint: objective, data, max_length, dev figures."""


@dataclass(frozen=True)
class LoadedCross:
    """A cross-encoder checkpoint ready to export (eval mode, fp32) and facts about it."""

    model: Any
    tokenizer: Any
    name: str
    model_type: str
    architectures: list[str]
    runtime_tokenizer: Any
    """The `tokenizers.Tokenizer` the bundle serves (padding and truncation off)."""
    tokenizer_source: str
    pad_id: int
    labels: list[str]
    uses_token_types: bool
    segment_ids: bool
    hidden: int
    heads: int
    max_positions: int
    default_max_length: int
    card: dict[str, Any] | None

    @property
    def num_labels(self) -> int:
        return len(self.labels)


def _read_card(model: str) -> dict[str, Any] | None:
    """The checkpoint's card.json, local or from the hub; None when it has none."""
    local = Path(model) / CARD_FILE
    if local.is_file():
        return dict(json.loads(local.read_text()))
    if Path(model).is_dir():
        return None
    try:
        from huggingface_hub import hf_hub_download

        return dict(json.loads(Path(hf_hub_download(model, CARD_FILE)).read_text()))
    except Exception:  # noqa: BLE001 - the card is optional; any hub failure means absent
        return None


def card_max_length(card: dict[str, Any] | None) -> int | None:
    """The max length the checkpoint was trained with, as its card records it (top level, or
    under `hyperparameters` as `simsvc finetune` writes it)."""
    if not card:
        return None
    value = card.get("max_length") or (card.get("hyperparameters") or {}).get("max_length")
    return int(value) if value else None


def load_cross_checkpoint(model: str) -> LoadedCross:
    """Load a hub id or local sequence-classifier checkpoint in fp32 eval mode."""
    tokenizer = load_fast_tokenizer(model)
    import torch
    from transformers import AutoModelForSequenceClassification

    loaded = AutoModelForSequenceClassification.from_pretrained(
        model, dtype=torch.float32, attn_implementation="eager"
    )
    loaded = loaded.float().eval()
    config = loaded.config
    num_labels = int(config.num_labels)
    if num_labels not in (1, 2):
        raise ValueError(
            f"{model}: a cross-encoder has 1 label (a relevance logit) or 2 (dissimilar, "
            f"similar); this checkpoint has {num_labels}"
        )
    id2label = getattr(config, "id2label", None) or {}
    labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(num_labels)]
    uses_token_types = takes_token_types(loaded)
    segment_ids = uses_token_types and int(getattr(config, "type_vocab_size", 2)) > 1
    max_positions = int(getattr(config, "max_position_embeddings", 512))
    card = _read_card(model)
    tok_max = int(getattr(tokenizer, "model_max_length", 512) or 512)
    default = card_max_length(card) or min(tok_max, 512)
    runtime_tok, source = checkpoint_tokenizer(model, tokenizer)
    check_vocab_fits(runtime_tok, int(config.vocab_size), model)
    return LoadedCross(
        model=loaded,
        tokenizer=tokenizer,
        name=model,
        model_type=str(getattr(config, "model_type", "bert")),
        architectures=list(getattr(config, "architectures", None) or []),
        runtime_tokenizer=runtime_tok,
        tokenizer_source=source,
        pad_id=tokenizer_pad_id(tokenizer, runtime_tok),
        labels=labels,
        uses_token_types=uses_token_types,
        segment_ids=segment_ids,
        hidden=int(config.hidden_size),
        heads=int(config.num_attention_heads),
        max_positions=max_positions,
        default_max_length=min(default, max_positions),
        card=card,
    )


def logits_module(ckpt: LoadedCross) -> Any:
    """A torch module around the classifier that returns its logits only (eval mode)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = ckpt.model

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
        ) -> torch.Tensor:
            kwargs = forward_kwargs(input_ids, attention_mask, token_type_ids)
            logits: torch.Tensor = self.classifier(**kwargs, return_dict=True).logits
            return logits

    return Logits().eval()


def export_cross(ckpt: LoadedCross, out_dir: Path, opset: int = 17) -> list[str]:
    """Write `cross.onnx` and `cross_tokenizer.json` into out_dir; returns the input names."""
    sample = ckpt.tokenizer(
        ["hello world", "a longer first text of the pair"],
        ["a second text", "b"],
        padding=True,
        return_tensors="pt",
    )
    inputs = trace_to_onnx(
        logits_module(ckpt),
        sample,
        ckpt.uses_token_types,
        [LOGITS],
        out_dir / CROSS_MODEL_FILE,
        opset,
    )
    save_runtime_tokenizer(ckpt.runtime_tokenizer, out_dir / CROSS_TOKENIZER_FILE)
    return inputs


def parity_pairs(extra: list[tuple[str, str]], count: int = 24) -> list[tuple[str, str]]:
    """Pairs of mixed lengths (short with long, both long: truncation) plus data pairs."""
    texts = list(PARITY_TEXTS)
    pairs = [(a, b) for i, a in enumerate(texts) for b in texts[i::3]]
    return pairs + list(islice(extra, count))


def reference_pair_ids(
    ckpt: LoadedCross, pairs: list[tuple[str, str]], max_length: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Ids and type ids of pairs as the checkpoint's tokenizer gives them (its own
    tokenizer.json when it ships one, else transformers'), the longer side cut first."""
    if ckpt.tokenizer_source != "checkpoint":
        hf = ckpt.tokenizer(
            [a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=max_length
        )
        ids = [list(h) for h in hf["input_ids"]]
        types = [list(h) for h in hf.get("token_type_ids") or [[0] * len(i) for i in ids]]
        return ids, types
    from tokenizers import Tokenizer

    ref = Tokenizer.from_str(ckpt.runtime_tokenizer.to_str())
    ref.enable_truncation(max_length, strategy="longest_first")
    encodings = ref.encode_batch(list(pairs), add_special_tokens=True)
    return [list(e.ids) for e in encodings], [list(e.type_ids) for e in encodings]


def check_cross_parity(
    ckpt: LoadedCross,
    core: OnnxCrossEncoder,
    pairs: list[tuple[str, str]],
) -> CrossParity:
    """Compare ONNX logits with PyTorch's on padded batches of mixed-length pairs.

    Both sides get the runtime tokenizer's ids and segment ids; whether they equal the
    checkpoint tokenizer's (truncation of the longer side first) is recorded as well.
    """
    import torch

    module = logits_module(ckpt)
    assert not module.training and not ckpt.model.training
    tokens = core.tokenize_pairs(pairs)
    ref_ids, ref_types = reference_pair_ids(ckpt, pairs, core.max_length)
    match = all(list(t.ids) == r for t, r in zip(tokens, ref_ids, strict=True))
    if ckpt.segment_ids:
        match = match and all(
            list(t.type_ids or []) == r for t, r in zip(tokens, ref_types, strict=True)
        )
    worst = 0.0
    batches = 0
    # In the given order, four at a time: short and long pairs share batches, so padding and
    # the attention mask are exercised.
    for start in range(0, len(tokens), 4):
        batch: list[Tokenized] = tokens[start : start + 4]
        got = core.infer(batch)[LOGITS]
        ids, mask = pad_batch(batch, core.pad_id)
        args = [torch.from_numpy(ids), torch.from_numpy(mask)]
        if ckpt.uses_token_types:
            args.append(torch.from_numpy(pad_type_ids(batch)))
        with torch.no_grad():
            ref = module(*args).numpy()
        worst = max(worst, float(np.abs(got - ref).max()))
        batches += 1
    return CrossParity(max_abs_diff=worst, pairs=len(pairs), batches=batches, tokenizer_match=match)
