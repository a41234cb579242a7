"""Dev figures of a fine-tuned checkpoint: Spearman x100 (and AUC, accuracy for 0/1 labels)
on labelled pairs, nDCG@10 x100 on a BEIR split.

`simsvc finetune` scores its dev sets with `DevSets` during training; `simsvc
evaluate-checkpoint` scores any output folder the same way afterwards (fp32 by default),
and for a cross-encoder also with each pair read in both orders and the logits averaged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.finetune_data import PairData, is_retrieval, read_pair_data, read_retrieval
from models.finetune_models import (
    encode_texts,
    load_cross,
    load_encoder,
    pair_figures,
    retrieval_figures,
    score_pairs,
    st_pooling,
)
from models.training import quiet_transformers, resolve_device, resolve_precision


class DevSets:
    """The dev data, read once; `figures` scores a network on all of it."""

    def __init__(self, paths: list[str], objective: str) -> None:
        self.sets: list[tuple[str, Any]] = []
        names = [Path(p).name for p in paths]
        for p in paths:
            path = Path(p)
            name = path.name if names.count(path.name) == 1 else f"{path.parent.name}/{path.name}"
            if is_retrieval(path):
                if objective == "cross":
                    raise ValueError(f"--dev {path}: a BEIR split scores a bi-encoder")
                self.sets.append((name, read_retrieval(path, "dev")))
            else:
                data = read_pair_data([path], "dev")
                if data.kind == "positive":
                    raise ValueError(f"--dev {path}: dev pairs need labels (or a BEIR split)")
                self.sets.append((name, data))

    def __bool__(self) -> bool:
        return bool(self.sets)

    def figures(
        self,
        net: Any,
        tok: Any,
        objective: str,
        pooling: str,
        max_length: int,
        device: Any,
        precision: str,
        both_orders: bool = False,
        prompts: tuple[str, str] = ("", ""),
    ) -> dict[str, dict[str, float]]:
        """Each set's figures; a bi-encoder reads pairs and queries with `prompts[0]`
        prepended, BEIR documents with `prompts[1]`."""
        query, document = prompts
        out: dict[str, dict[str, float]] = {}
        for name, data in self.sets:
            if isinstance(data, PairData) and objective == "cross":
                s = score_pairs(net, tok, data.a, data.b, max_length, device, precision)
                out[name] = pair_figures(s, data.gold, data.kind == "binary", cut=0.0)
                if both_orders:
                    back = score_pairs(net, tok, data.b, data.a, max_length, device, precision)
                    mean = pair_figures((s + back) / 2, data.gold, data.kind == "binary", 0.0)
                    out[name] |= {f"{k}_both_orders": v for k, v in mean.items()}
            elif isinstance(data, PairData):
                texts = list(dict.fromkeys(data.a + data.b))
                where = {t: i for i, t in enumerate(texts)}
                shown = [query + t for t in texts]
                vec = encode_texts(net, tok, shown, pooling, max_length, device, precision)
                ia = np.array([where[t] for t in data.a])
                ib = np.array([where[t] for t in data.b])
                cos = np.einsum("ij,ij->i", vec[ia], vec[ib]).astype(np.float64)
                out[name] = pair_figures(cos, data.gold, data.kind == "binary", cut=None)
            else:
                qids = sorted(data.qrels)
                dids = list(data.corpus)
                queries = [query + data.queries[q] for q in qids]
                docs = [document + data.corpus[d] for d in dids]
                out[name] = retrieval_figures(
                    encode_texts(net, tok, queries, pooling, max_length, device, precision),
                    encode_texts(net, tok, docs, pooling, max_length, device, precision),
                    qids,
                    dids,
                    data,
                )
        return out


def primary(figures: dict[str, dict[str, float]]) -> float:
    """The figure early stopping follows: the first dev set's Spearman or nDCG@10."""
    first = next(iter(figures.values()))
    return float(first["ndcg@10"] if "ndcg@10" in first else first["spearman"])


def figure_line(point: dict[str, Any]) -> str:
    """One readable line of a dev evaluation."""
    parts = []
    for name, figures in point["sets"].items():
        shown = ", ".join(f"{k} {v}" for k, v in figures.items() if k != "queries")
        parts.append(f"{name}: {shown}")
    return "; ".join(parts)


def is_cross_checkpoint(model: str) -> bool:
    """A sequence classifier with one logit (what `finetune --objective cross` writes)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    arch = config.architectures or []
    return any(a.endswith("ForSequenceClassification") for a in arch) and config.num_labels == 1


def evaluate_checkpoint(
    model: str,
    dev: list[Path],
    max_length: int = 128,
    pooling: str = "auto",
    device: str = "auto",
    precision: str = "fp32",
    threads: int = 0,
) -> dict[str, Any]:
    """Dev figures of a bi-encoder (cosine of pooled vectors, text with the checkpoint's
    query/document prompts) or a cross-encoder (its logit, and the mean of both orders')."""
    import torch

    from models.checkpoint_files import training_tokenizer

    quiet_transformers()
    if threads > 0:
        torch.set_num_threads(threads)
    where = resolve_device(device)
    prec = resolve_precision(precision, where)
    cross = is_cross_checkpoint(model)
    objective = "cross" if cross else "bi"
    if pooling == "auto":
        pooling = "cls" if cross else (st_pooling(model) or "mean")
    sets = DevSets([str(p) for p in dev], "cross" if cross else "mnrl")
    net = (load_cross(model, 0) if cross else load_encoder(model)).to(where)
    tok = training_tokenizer(model)
    prompts = ("", "")
    if not cross:
        from models.prompts import PromptOptions, read_st_prompts, resolve_prompts

        found = resolve_prompts(*read_st_prompts(model), PromptOptions())
        texts = found.prompts
        prompts = (texts.get(found.query_name or "", ""), texts.get(found.document_name or "", ""))
    figures = sets.figures(
        net, tok, objective, pooling, max_length, where, prec, both_orders=True, prompts=prompts
    )
    return {
        "model": Path(model).name,
        "kind": "cross-encoder" if cross else f"bi-encoder ({pooling} pooling)",
        "max_length": max_length,
        "precision": prec,
        "figures": figures,
    }
