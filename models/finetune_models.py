"""The networks `simsvc finetune` trains, their losses, their dev figures and their output.

- Bi-encoder (`cosent`, `mnrl`): the checkpoint's encoder (`AutoModel`) and a pooling
  (masked mean of the last layer, or [CLS]); the cosine of two pooled vectors scores a pair.
  Saved as a Hugging Face checkpoint plus the sentence-transformers files that declare the
  pooling, which `simsvc build --pooling auto` reads.
- Cross-encoder (`cross`): `AutoModelForSequenceClassification` with one logit over the
  joint input `[CLS] a [SEP] b [SEP]` (token_type_ids 0/1); sigmoid(logit) is the
  probability. For BERT the logit is a linear layer on the pooled [CLS] vector.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.finetune_data import RetrievalSet
from models.training import autocast
from service.runtime.stats import l2_normalize, ndcg_at_k, recall_at_k, spearman

POOLINGS = ("mean", "cls")
EVAL_BATCH = 64


# --- building ------------------------------------------------------------------------------


def load_encoder(model: str) -> Any:
    """The checkpoint's encoder in fp32 (any head it carries is dropped)."""
    import torch
    from transformers import AutoModel

    return AutoModel.from_pretrained(model, dtype=torch.float32).float()


def load_cross(model: str, seed: int) -> Any:
    """A one-logit sequence classifier on the checkpoint; a new classifier starts seeded."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model)
    arch = config.architectures or []
    keep = any(a.endswith("ForSequenceClassification") for a in arch) and config.num_labels == 1
    torch.manual_seed(seed)
    net = AutoModelForSequenceClassification.from_pretrained(
        model, num_labels=1, dtype=torch.float32, ignore_mismatched_sizes=not keep
    )
    net.config.problem_type = None
    return net.float()


def st_pooling(model: str) -> str | None:
    """The pooling a sentence-transformers checkpoint declares (`mean`/`cls`), if any."""
    from models.export_onnx import _read_st_config

    pooling, _ = _read_st_config(model)
    return pooling if pooling in POOLINGS else None


def st_max_length(model: str) -> int | None:
    from models.export_onnx import _read_st_config

    return _read_st_config(model)[1]


# --- forward passes ------------------------------------------------------------------------


def tokenize(tokenizer: Any, a: list[str], b: list[str] | None, max_length: int) -> dict[str, Any]:
    """Padded tensors for single texts, or for pairs tokenized jointly (segments 0/1)."""
    enc = tokenizer(
        a,
        b,
        padding=True,
        truncation="longest_first" if b is not None else True,
        max_length=max_length,
        return_tensors="pt",
    )
    return dict(enc)


def pool(hidden: Any, mask: Any, pooling: str) -> Any:
    """Masked mean of the token vectors, or the [CLS] vector."""
    if pooling == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def embed(net: Any, batch: dict[str, Any], pooling: str) -> Any:
    """Pooled vectors (fp32) of a tokenized batch."""
    out = net(**model_inputs(net, batch))
    return pool(out.last_hidden_state, batch["attention_mask"], pooling).float()


def cosent_loss(cos: Any, target: Any, scale: float) -> Any:
    """CoSENT: log(1 + sum over pairs i, j with target_i > target_j of
    exp(scale * (cos_j - cos_i))): every higher-labelled pair should have the higher cosine."""
    import torch

    s = cos * scale
    diff = s[None, :] - s[:, None]  # [i, j] = s_j - s_i
    wrong = target[:, None] > target[None, :]
    values = diff[wrong]
    zero = torch.zeros(1, dtype=values.dtype, device=values.device)
    return torch.logsumexp(torch.cat([zero, values]), dim=0)


def mnrl_loss(q: Any, p: Any, scale: float) -> Any:
    """Multiple negatives ranking: each query's positive against the batch's other ones."""
    import torch
    import torch.nn.functional as F

    sim = F.normalize(q, dim=-1) @ F.normalize(p, dim=-1).T * scale
    return F.cross_entropy(sim, torch.arange(len(q), device=q.device))


def model_inputs(net: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """The batch as the network takes it: no token_type_ids for a model with one token type
    (XLM-R-style vocabularies; their pair template gives all zeros anyway)."""
    if "token_type_ids" in batch and int(getattr(net.config, "type_vocab_size", 2)) <= 1:
        return {k: v for k, v in batch.items() if k != "token_type_ids"}
    return batch


def cross_logits(net: Any, batch: dict[str, Any]) -> Any:
    return net(**model_inputs(net, batch)).logits.squeeze(-1).float()


# --- dev figures ---------------------------------------------------------------------------


def _by_length(texts: list[str]) -> list[int]:
    return sorted(range(len(texts)), key=lambda i: len(texts[i]))


def encode_texts(
    net: Any,
    tokenizer: Any,
    texts: list[str],
    pooling: str,
    max_length: int,
    device: Any,
    precision: str,
) -> np.ndarray:
    """L2-normalised pooled vectors, in eval mode, batched by length."""
    import torch

    order = _by_length(texts)
    out = np.zeros((len(texts), int(net.config.hidden_size)), dtype=np.float32)
    was = net.training
    net.eval()
    with torch.no_grad(), autocast(device, precision):
        for i in range(0, len(order), EVAL_BATCH):
            rows = order[i : i + EVAL_BATCH]
            batch = tokenize(tokenizer, [texts[r] for r in rows], None, max_length)
            vectors = embed(net, {k: v.to(device) for k, v in batch.items()}, pooling)
            out[rows] = vectors.cpu().numpy()
    net.train(was)
    return l2_normalize(out)


def map_pairs(
    net: Any,
    tokenizer: Any,
    a: list[str],
    b: list[str],
    max_length: int,
    device: Any,
    precision: str,
    forward: Callable[[dict[str, Any]], Any],
    width: int | None = None,
) -> np.ndarray:
    """`forward` of each jointly tokenized (a, b) pair in eval mode, batched by length, rows
    in the input order: one value per pair, or `width` values."""
    import torch

    order = _by_length([x + y for x, y in zip(a, b, strict=True)])
    out = np.zeros(len(a) if width is None else (len(a), width), dtype=np.float64)
    was = net.training
    net.eval()
    with torch.no_grad(), autocast(device, precision):
        for i in range(0, len(order), EVAL_BATCH):
            rows = order[i : i + EVAL_BATCH]
            batch = tokenize(tokenizer, [a[r] for r in rows], [b[r] for r in rows], max_length)
            out[rows] = forward({k: v.to(device) for k, v in batch.items()}).float().cpu().numpy()
    net.train(was)
    return out


def score_pairs(
    net: Any,
    tokenizer: Any,
    a: list[str],
    b: list[str],
    max_length: int,
    device: Any,
    precision: str,
) -> np.ndarray:
    """Cross-encoder logits of (a, b) pairs, in eval mode, batched by length."""
    return map_pairs(
        net, tokenizer, a, b, max_length, device, precision, lambda batch: cross_logits(net, batch)
    )


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic; ties count half)."""
    from service.runtime.stats import rankdata

    pos = labels >= 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pair_figures(
    scores: np.ndarray, gold: np.ndarray, binary: bool, cut: float | None
) -> dict[str, float]:
    """Spearman x100 against the gold scores; for binary gold also AUC x100, and accuracy
    x100 where the model has its own decision point `cut` (a logit of 0; a cosine has none)."""
    figures = {"spearman": round(100 * spearman(scores, gold), 2)}
    if binary:
        figures["auc"] = round(100 * auc(scores, gold), 2)
        if cut is not None:
            hits = (scores >= cut) == (gold >= 0.5)
            figures["accuracy"] = round(100 * float(hits.mean()), 2)
    return figures


def retrieval_figures(
    queries: np.ndarray, docs: np.ndarray, qids: list[str], dids: list[str], rel: RetrievalSet
) -> dict[str, float]:
    """nDCG@10 and recall@100 x100 of exact cosine search over the whole corpus."""
    sims = queries @ docs.T
    top = np.argsort(-sims, axis=1)[:, :100]
    ndcg = [ndcg_at_k([dids[j] for j in top[i]], rel.qrels[q], 10) for i, q in enumerate(qids)]
    recall = [recall_at_k([dids[j] for j in top[i]], rel.qrels[q], 100) for i, q in enumerate(qids)]
    return {
        "ndcg@10": round(100 * float(np.mean(ndcg)), 2),
        "recall@100": round(100 * float(np.mean(recall)), 2),
        "queries": len(qids),
    }


# --- output --------------------------------------------------------------------------------


def write_st_files(out: Path, pooling: str, hidden: int, max_length: int) -> None:
    """The sentence-transformers files that declare the pooling and max length."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "2_Normalize").mkdir(exist_ok=True)
    pooling_cfg = {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling_cfg, indent=2))
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_length, "do_lower_case": False}, indent=2)
    )


def mark_cross(net: Any, label: str = "similar") -> None:
    """Config fields that say how the one logit reads (sentence-transformers' CrossEncoder
    applies the sigmoid from them): "similar" for pair similarity, "relevant" for a
    reranker."""
    net.config.id2label = {0: label}
    net.config.label2id = {label: 0}
    net.config.sentence_transformers = {
        "activation_fn": "torch.nn.modules.activation.Sigmoid",
    }
