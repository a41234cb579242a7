"""Export a Hugging Face BERT-family encoder to ONNX with pooled outputs, and prove parity.

The graph takes `input_ids`, `attention_mask` (and `token_type_ids` when the model uses them)
with dynamic batch and sequence axes, and yields four pooled vectors: `cls`, `pooler` (BERT's
tanh pooler; `cls` when the checkpoint has no trained pooler), `mean` (masked mean of the last
layer) and `first_last_avg` (masked mean of the average of the first and last layers). The
full hidden states never leave the graph.

The bundle's tokenizer.json is the checkpoint's own when it ships one (WordPiece, or a
SentencePiece Unigram model with XLM-R specials and no vocab.txt): its normaliser,
post-processor (the special tokens, the pair template) and ids are served as the checkpoint
defines them. transformers 5 rebuilds some tokenizers from their class instead (XLM-R's drops
the file's normaliser), so it is used only for checkpoints without a tokenizer.json.
"""

from __future__ import annotations

import inspect
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.runtime.bundle import Parity
from service.runtime.encoder import OnnxEncoder, Tokenized, pad_batch, plan_batches
from service.runtime.types import POOLINGS

log = logging.getLogger("simsvc.build")

BUILD_EXTRA_HINT = (
    "the offline pipeline needs the build extra (torch, transformers, scikit-learn, onnx): "
    "pip install 'simsvc[build]' (torch is pinned to 2.13.0)"
)

PARITY_TEXTS = (
    "A",
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Semantic similarity services turn text into vectors; whitening makes the cosine of those "
    "vectors better reflect meaning, because raw BERT vectors crowd into a narrow cone.",
    "一架飞机正在起飞。",
    "他说：“你好，世界！”　全角ＡＢＣ１２３",
    "Numbers 1234, symbols #@!, and MiXeD case.",
    "short",
    " ".join(["long input that runs past the export length to check truncation"] * 40),
)


def require_build_extra() -> None:
    """Raise an actionable ImportError when torch or transformers is missing."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ImportError(BUILD_EXTRA_HINT) from exc


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint ready to export: the model (eval mode, fp32), tokenizer and facts about it."""

    model: Any
    tokenizer: Any
    name: str
    model_type: str
    architectures: list[str]
    runtime_tokenizer: Any
    """The `tokenizers.Tokenizer` the bundle serves (padding and truncation off)."""
    tokenizer_source: str
    """'checkpoint' (its tokenizer.json) or 'transformers' (the fast tokenizer it builds)."""
    pad_id: int
    pooler_trained: bool
    uses_token_types: bool
    hidden: int
    heads: int
    max_positions: int
    st_pooling: str | None
    st_max_length: int | None


def _read_st_config(model: str) -> tuple[str | None, int | None]:
    """Pooling mode and max length a sentence-transformers checkpoint declares, if any."""

    def fetch(name: str) -> dict[str, Any] | None:
        local = Path(model) / name
        if local.is_file():
            return dict(json.loads(local.read_text()))
        if Path(model).is_dir():
            return None
        try:
            from huggingface_hub import hf_hub_download

            return dict(json.loads(Path(hf_hub_download(model, name)).read_text()))
        except Exception:  # noqa: BLE001 - the file is optional; any hub failure means absent
            return None

    pooling = None
    pool_cfg = fetch("1_Pooling/config.json")
    if pool_cfg:
        if pool_cfg.get("pooling_mode_mean_tokens"):
            pooling = "mean"
        elif pool_cfg.get("pooling_mode_cls_token"):
            pooling = "cls"
    st_cfg = fetch("sentence_bert_config.json")
    max_len = int(st_cfg["max_seq_length"]) if st_cfg and "max_seq_length" in st_cfg else None
    return pooling, max_len


def load_fast_tokenizer(model: str) -> Any:
    """The checkpoint's fast (Rust) tokenizer, the one the runtime reads as tokenizer.json."""
    require_build_extra()
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    tokenizer = AutoTokenizer.from_pretrained(model)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{model}: a fast (Rust) tokenizer is needed; none could be made")
    return tokenizer


def checkpoint_tokenizer(model: str, hf_tokenizer: Any) -> tuple[Any, str]:
    """The tokenizer the checkpoint defines, padding and truncation off, and its source:
    its own tokenizer.json ('checkpoint') when it ships one, else the fast tokenizer
    transformers builds from vocab.txt or a SentencePiece model ('transformers')."""
    from tokenizers import Tokenizer

    local = Path(model) / "tokenizer.json"
    path: Path | None = local if local.is_file() else None
    if path is None and not Path(model).is_dir():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model, "tokenizer.json"))
        except Exception:  # noqa: BLE001 - optional file; any hub failure means absent
            path = None
    if path is not None:
        tok, source = Tokenizer.from_file(str(path)), "checkpoint"
    else:
        tok, source = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str()), "transformers"
    tok.no_padding()
    tok.no_truncation()
    return tok, source


def tokenizer_pad_id(hf_tokenizer: Any, tok: Any) -> int:
    """The padding id: the tokenizer's declared pad token (XLM-R's `<pad>` is 1, BERT's
    `[PAD]` 0), else one the tokenizer.json names, else 0 (masked out either way)."""
    pad = getattr(hf_tokenizer, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    for name in ("<pad>", "[PAD]"):
        found = tok.token_to_id(name)
        if found is not None:
            return int(found)
    return 0


def check_vocab_fits(tok: Any, vocab_size: int, model: str) -> None:
    """Refuse a tokenizer whose ids run past the model's embedding table."""
    size = int(tok.get_vocab_size(with_added_tokens=True))
    if size > vocab_size:
        raise ValueError(
            f"{model}: the tokenizer has {size} ids, the model's embeddings only {vocab_size}"
        )


def takes_token_types(model: Any) -> bool:
    """Whether the model's forward takes token_type_ids (BERT does, DistilBERT does not)."""
    return "token_type_ids" in inspect.signature(model.forward).parameters


def load_checkpoint(model: str) -> LoadedCheckpoint:
    """Load a hub id or local checkpoint directory in fp32 eval mode, with its fast tokenizer."""
    tokenizer = load_fast_tokenizer(model)
    import torch
    from transformers import AutoModel

    loaded, info = AutoModel.from_pretrained(
        model, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    loaded = loaded.float().eval()
    missing = set(info.get("missing_keys", []))
    pooler = getattr(loaded, "pooler", None)
    pooler_trained = pooler is not None and not any("pooler" in k for k in missing)
    config = loaded.config
    uses_token_types = takes_token_types(loaded)
    st_pooling, st_max = _read_st_config(model)
    runtime_tok, source = checkpoint_tokenizer(model, tokenizer)
    check_vocab_fits(runtime_tok, int(config.vocab_size), model)
    return LoadedCheckpoint(
        model=loaded,
        tokenizer=tokenizer,
        name=model,
        model_type=str(getattr(config, "model_type", "bert")),
        architectures=list(getattr(config, "architectures", None) or []),
        runtime_tokenizer=runtime_tok,
        tokenizer_source=source,
        pad_id=tokenizer_pad_id(tokenizer, runtime_tok),
        pooler_trained=pooler_trained,
        uses_token_types=uses_token_types,
        hidden=int(config.hidden_size),
        heads=int(config.num_attention_heads),
        max_positions=int(getattr(config, "max_position_embeddings", 512)),
        st_pooling=st_pooling,
        st_max_length=st_max,
    )


def pooling_module(ckpt: LoadedCheckpoint) -> Any:
    """A torch module around the encoder that returns the four pooled vectors (eval mode)."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = ckpt.model

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
        ) -> tuple[torch.Tensor, ...]:
            kwargs = forward_kwargs(input_ids, attention_mask, token_type_ids)
            out = self.encoder(**kwargs, output_hidden_states=True, return_dict=True)
            hidden = out.hidden_states
            last, first = hidden[-1], hidden[1]
            mask = attention_mask.unsqueeze(-1).to(last.dtype)
            count = mask.sum(dim=1).clamp(min=1.0)
            cls = last[:, 0]
            pooler = out.pooler_output if ckpt.pooler_trained else cls
            mean = (last * mask).sum(dim=1) / count
            first_last = ((first + last) * 0.5 * mask).sum(dim=1) / count
            return cls, pooler, mean, first_last

    return Pooled().eval()


def forward_kwargs(
    input_ids: Any, attention_mask: Any, token_type_ids: Any = None
) -> dict[str, Any]:
    """The model's keyword inputs; token_type_ids only when the graph has that input."""
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids
    return kwargs


def trace_to_onnx(
    module: Any,
    sample: Any,
    uses_token_types: bool,
    outputs: list[str],
    path: Path,
    opset: int,
) -> list[str]:
    """Trace `module` on a tokenizer's padded sample into `path` with dynamic batch and
    sequence axes; returns the graph's input names."""
    import torch

    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if uses_token_types else [])
    args = tuple(
        sample[name] if name in sample else torch.zeros_like(sample["input_ids"]) for name in inputs
    )
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
    axes.update({name: {0: "batch"} for name in outputs})
    # The tracer warns that shape checks in the attention mask become constants; the parity
    # check on batches of other shapes is what proves the graph right.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return inputs


def save_runtime_tokenizer(tok: Any, path: Path) -> None:
    """The Rust tokenizer the runtime loads, without padding or truncation: the runtime pads
    itself (with the manifest's pad_id) and sets truncation from the manifest's max_length."""
    from tokenizers import Tokenizer

    runtime_tok = Tokenizer.from_str(tok.to_str())
    runtime_tok.no_padding()
    runtime_tok.no_truncation()
    runtime_tok.save(str(path))


def tokenizer_model(tok: Any) -> str:
    """The tokenizers model kind: WordPiece, Unigram, BPE, WordLevel."""
    return str(json.loads(tok.to_str())["model"]["type"])


def reference_ids(
    ckpt_tokenizer: Any, hf_tokenizer: Any, source: str, texts: list[str], max_length: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Ids of texts cut to max_length by the checkpoint's tokenizer (the reference the runtime
    must equal) and by transformers' (recorded when it differs)."""
    from tokenizers import Tokenizer

    hf_ids = [
        list(h) for h in hf_tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    ]
    if source != "checkpoint":
        return hf_ids, hf_ids
    ref = Tokenizer.from_str(ckpt_tokenizer.to_str())
    ref.enable_truncation(max_length)
    return [list(e.ids) for e in ref.encode_batch(texts, add_special_tokens=True)], hf_ids


def export_onnx(ckpt: LoadedCheckpoint, out_dir: Path, opset: int = 17) -> list[str]:
    """Write `model.onnx` and `tokenizer.json` into out_dir; returns the graph's input names."""
    sample = ckpt.tokenizer(
        ["hello world", "a second, longer sample sentence"], padding=True, return_tensors="pt"
    )
    inputs = trace_to_onnx(
        pooling_module(ckpt),
        sample,
        ckpt.uses_token_types,
        list(POOLINGS),
        out_dir / "model.onnx",
        opset,
    )
    save_runtime_tokenizer(ckpt.runtime_tokenizer, out_dir / "tokenizer.json")
    return inputs


def check_parity(
    ckpt: LoadedCheckpoint,
    encoder: OnnxEncoder,
    texts: list[str],
    batch_tokens: int = 2048,
) -> tuple[dict[str, Parity], bool, int]:
    """Compare the ONNX encoder with PyTorch on padded batches of mixed lengths.

    Both sides get the same ids (the runtime tokenizer's). Returns per-output figures,
    whether the runtime tokenizer agrees with the checkpoint's on these texts, and on how
    many of them transformers' tokenizer differs from the checkpoint's.
    """
    import torch

    module = pooling_module(ckpt)
    assert not module.training and not ckpt.model.training
    tokens = encoder.tokenize(texts)
    ref_ids, hf_ids = reference_ids(
        ckpt.runtime_tokenizer, ckpt.tokenizer, ckpt.tokenizer_source, texts, encoder.max_length
    )
    tokenizer_match = all(list(t.ids) == r for t, r in zip(tokens, ref_ids, strict=True))
    differs = sum(r != h for r, h in zip(ref_ids, hf_ids, strict=True))
    worst = {name: (0.0, 1.0) for name in POOLINGS}
    # Batches sorted by length but several lengths each, so padding is exercised.
    for rows in plan_batches([len(t) for t in tokens], batch_tokens, max_size=4):
        batch: list[Tokenized] = [tokens[i] for i in rows]
        onnx_out = encoder.infer(batch)
        ids, mask = pad_batch(batch, encoder.pad_id)
        args = [torch.from_numpy(ids), torch.from_numpy(mask)]
        if ckpt.uses_token_types:
            args.append(torch.zeros_like(args[0]))
        with torch.no_grad():
            torch_out = [t.numpy() for t in module(*args)]
        for name, ref in zip(POOLINGS, torch_out, strict=True):
            got = onnx_out[name]
            diff = float(np.abs(got - ref).max())
            cos = (got * ref).sum(1) / (
                np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12
            )
            prev_diff, prev_cos = worst[name]
            worst[name] = (max(prev_diff, diff), min(prev_cos, float(cos.min())))
    figures = {name: Parity(max_abs_diff=d, min_cosine=c) for name, (d, c) in worst.items()}
    return figures, tokenizer_match, differs
