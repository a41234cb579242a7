"""A fine-tuning objective's part of a run: the network it trains, the items it learns
from, the batches and loss of each step, and the servable checkpoint it writes.

Each epoch's order is a permutation seeded by (seed, epoch), so a resumed run replays it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.checkpoint_files import copy_base_files
from models.finetune_config import CROSS_OBJECTIVES, TrainConfig
from models.finetune_data import (
    PairData,
    both_orders,
    bucketed_batches,
    distinct_batches,
    epoch_order,
    plain_batches,
    read_pair_data,
)
from models.finetune_models import (
    cosent_loss,
    cross_logits,
    embed,
    load_cross,
    load_encoder,
    mark_cross,
    mnrl_loss,
    st_max_length,
    tokenize,
    write_st_files,
)
from models.training import autocast


@dataclass
class Task:
    """A run's network and how it turns a batch of training items into a loss."""

    cfg: TrainConfig
    net: Any
    tokenizer: Any
    data: PairData
    device: Any
    precision: str

    def batches(self, epoch: int) -> list[list[int]]:
        order = epoch_order(len(self.data), self.cfg.seed, epoch)
        if self.cfg.objective == "mnrl":
            return distinct_batches(order, self.cfg.batch_size, self.data.a, self.data.b)
        if self.cfg.length_window <= 0:
            return plain_batches(order, self.cfg.batch_size)
        lengths = np.array([len(x) + len(y) for x, y in zip(self.data.a, self.data.b, strict=True)])
        rng = np.random.default_rng([self.cfg.seed, 8, epoch])
        return bucketed_batches(order, self.cfg.batch_size, lengths, self.cfg.length_window, rng)

    def _tensors(self, a: list[str], b: list[str] | None) -> dict[str, Any]:
        batch = tokenize(self.tokenizer, a, b, self.cfg.max_length)
        return {k: v.to(self.device) for k, v in batch.items()}

    def loss(self, rows: list[int]) -> Any:
        import torch

        cfg = self.cfg
        if cfg.objective == "rerank":
            from models.finetune_rerank import RerankData, rerank_loss

            assert isinstance(self.data, RerankData)
            with autocast(self.device, self.precision):
                return rerank_loss(
                    self.net,
                    lambda q, d: cross_logits(self.net, self._tensors(q, d)),
                    self.data,
                    rows,
                    cfg.rerank_loss,
                )
        a = [self.data.a[i] for i in rows]
        b = [self.data.b[i] for i in rows]
        target = torch.tensor(self.data.target[rows], dtype=torch.float32, device=self.device)
        with autocast(self.device, self.precision):
            if cfg.objective == "cross":
                logits = cross_logits(self.net, self._tensors(a, b))
                return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
            b_prompt = cfg.document_prompt if cfg.objective == "mnrl" else cfg.prompt
            u = embed(self.net, self._tensors([cfg.prompt + t for t in a], None), cfg.pooling)
            v = embed(self.net, self._tensors([b_prompt + t for t in b], None), cfg.pooling)
        if self.cfg.objective == "mnrl":
            return mnrl_loss(u, v, self.cfg.scale)
        cos = torch.nn.functional.cosine_similarity(u, v, dim=-1)
        return cosent_loss(cos, target, self.cfg.scale)


def build_net(cfg: TrainConfig) -> Any:
    """The network before training (a resumed run then loads its saved weights into it)."""
    if cfg.objective in CROSS_OBJECTIVES:
        return load_cross(cfg.model, cfg.seed)
    return load_encoder(cfg.model)


def training_data(cfg: TrainConfig, device: Any = None, precision: str = "fp32") -> PairData:
    """The items the objective learns from: MNRL takes positive pairs, the others labels;
    a cross-encoder reads every pair in both orders; a reranker takes a BEIR folder's
    judged pairs with hard negatives mined on `device`."""
    if cfg.objective == "rerank":
        from models.finetune_rerank import rerank_training_data

        return rerank_training_data(cfg, device or "cpu", precision)
    data = read_pair_data([Path(p) for p in cfg.pairs], "train")
    if cfg.objective == "mnrl" and data.kind != "positive":
        data = _positives_only(data)
    if cfg.objective != "mnrl" and data.kind == "positive":
        raise ValueError(f"--objective {cfg.objective} learns from labels: give labelled pairs")
    if cfg.objective == "cross":
        data = both_orders(data)
    return data


def _positives_only(data: PairData) -> PairData:
    """MNRL learns from positive pairs: labelled input keeps its positives (label >= 0.5)."""
    keep = np.flatnonzero(data.target >= 0.5)
    return PairData(
        "positive",
        [data.a[i] for i in keep],
        [data.b[i] for i in keep],
        np.ones(len(keep)),
        np.ones(len(keep)),
        data.sources,
    )


def write_model(out: Path, task: Task) -> None:
    """The servable checkpoint into `out`, written beside it first and moved in file by file."""
    tmp = out / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    cross = task.cfg.objective in CROSS_OBJECTIVES
    if cross:
        mark_cross(task.net, "relevant" if task.cfg.objective == "rerank" else "similar")
    task.net.save_pretrained(str(tmp))
    task.tokenizer.save_pretrained(str(tmp))
    if not cross:
        length = st_max_length(task.cfg.model) or task.cfg.max_length
        write_st_files(tmp, task.cfg.pooling, int(task.net.config.hidden_size), length)
    copy_base_files(task.cfg.model, tmp, prompts=not cross)
    for item in sorted(tmp.rglob("*"), key=lambda p: len(p.parts)):
        target = out / item.relative_to(tmp)
        if item.is_dir():
            target.mkdir(exist_ok=True)
        else:
            item.replace(target)
    shutil.rmtree(tmp, ignore_errors=True)
