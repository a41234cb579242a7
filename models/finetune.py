"""`simsvc finetune`: fine-tune a checkpoint on labelled pairs.

Objectives:

- `cosent` (bi-encoder): the cosine of two pooled vectors learns the order of the labels
  (CoSENT); graded (STS 0–5) and binary (0/1) labels both work.
- `mnrl` (bi-encoder): (query, positive) pairs, every other positive of the batch a negative
  (scaled cosine, cross-entropy); batches never hold the same query or positive twice.
- `cross`: the pair read jointly, `[CLS] a [SEP] b [SEP]` with segments 0/1, and one logit
  from a linear layer on the pooled [CLS] vector, trained with binary cross-entropy against
  the labels mapped onto [0, 1] (a regression-like soft target for graded scores, the
  logistic loss for 0/1); every pair is used in both orders. `--freeze` keeps the encoder
  frozen and fits only that layer with scikit-learn (`models/finetune_freeze.py`).
- `rerank`: a relevance cross-encoder on a BEIR folder's (query, relevant document) pairs
  with hard negatives from the service's hybrid retriever (`models/finetune_rerank.py`).

Bi-encoders train on text with the checkpoint's query prompt (MNRL positives and BEIR dev
documents with its document prompt), as the bundle serves them (`--prompt-name`,
`--no-prompt`). Written checkpoints keep the base's tokenizer.json and prompt config
(`models/checkpoint_files.py`).

The dev figure (Spearman x100 on labelled pairs, nDCG@10 x100 on a BEIR split) is measured
before training, every `--eval-every` steps (default: each epoch) and at the end; the best
weights are kept in `--out` and training stops after `--patience` evaluations without a
gain. Resuming is exact: the state in `out/state/` holds the current weights, AdamW, the
step (the learning rate is a function of it), the data position (epoch and batch; each
epoch's order is a permutation seeded by (seed, epoch)), torch's RNG (dropout) and the
fp16 scaler. `card.json` records the data, settings, times and the dev curve.

The loop, schedule and checkpoints are the harness's (`models/training_run.py`); the
options are in `models/finetune_config.py`, each objective's batches, loss and output in
`models/finetune_objective.py`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.checkpoint_files import training_tokenizer
from models.finetune_config import (
    CARD_FILE,
    CROSS_OBJECTIVES,
    FinetuneOptions,
    TrainConfig,
    resolve_config,
)
from models.finetune_eval import DevSets, figure_line, primary
from models.finetune_freeze import fit_frozen
from models.finetune_objective import Task, build_net, training_data, write_model
from models.training_run import RunState, TrainingRun, write_card

log = logging.getLogger("simsvc.finetune")

STATE_VERSION = 2


@dataclass
class FinetuneState(RunState):
    """The harness's run state plus the data position, epoch times and the dev curve."""

    steps_per_epoch: int = 1
    epoch: int = 0
    batch: int = 0
    epoch_seconds: list[float] = field(default_factory=list)
    epoch_start: float = 0.0
    """Training seconds when the current epoch began."""
    curve: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    eval_losses: list[float] = field(default_factory=list)
    """Training losses since the last dev evaluation (its point on the curve shows their mean)."""


class Finetuning(TrainingRun[FinetuneState]):
    """Fine-tuning's part of a run: the objective's batches and loss, the dev sets (the best
    weights are kept in `out`, with early stopping), and the card."""

    def __init__(self, opts: FinetuneOptions, say: Callable[[str], None]) -> None:
        super().__init__(opts, STATE_VERSION, say)
        import torch

        if opts.epochs is None and opts.time_budget is None and not opts.resume:
            raise ValueError("give --epochs, --time-budget or both")
        self.cfg = cfg = resolve_config(opts)
        self.open(cfg)
        data = training_data(cfg, self.device, self.precision)
        self.dev = dev_sets(cfg, self.device, self.precision)
        names = ", ".join(n for n, _ in self.dev.sets)
        say(f"{len(data)} training items ({data.kind}), dev: {names}")

        tokenizer = training_tokenizer(cfg.model)
        net = build_net(cfg)
        self.attach(net, cfg.lr, cfg.weight_decay)
        self.task = Task(cfg, net, tokenizer, data, self.device, self.precision)
        self.batches = self.task.batches(0)
        if not self.batches:
            raise ValueError("too few training pairs for one batch")
        resumed = self.resume(FinetuneState)
        if resumed is not None:
            self.run = resumed
            self.batches = self.task.batches(resumed.epoch)
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            self.run = FinetuneState(steps_per_epoch=len(self.batches))
            if self.dev:
                say(self.evaluate())
            steps = (
                None if opts.epochs is None else max(1, math.ceil(opts.epochs * len(self.batches)))
            )
            every = self._evals_per_epoch() / len(self.batches) if self.dev else 0.0
            self.run.horizon = self.plan(steps, every)
            torch.manual_seed(cfg.seed)

    def _evals_per_epoch(self) -> int:
        every = self.cfg.eval_every
        return 1 if every <= 0 else max(1, len(self.batches) // every)

    def batch_loss(self) -> tuple[Any, dict[str, float]]:
        run = self.run
        if run.batch >= len(self.batches):
            run.epoch, run.batch = run.epoch + 1, 0
            self.batches = self.task.batches(run.epoch)
        loss = self.task.loss(self.batches[run.batch])
        run.batch += 1
        run.eval_losses.append(float(loss.detach()))
        return loss, {"loss": run.eval_losses[-1]}

    def probe_loss(self) -> Any:
        return self.task.loss(self.batches[0])

    def stepped(self) -> bool:
        run = self.run
        epoch_end = run.batch >= len(self.batches)
        if epoch_end:
            run.epoch_seconds.append(run.seconds - run.epoch_start)
            run.epoch_start = run.seconds
        every = self.cfg.eval_every
        due = run.step % every == 0 if every > 0 else epoch_end
        return bool(self.dev) and (due or run.step == run.horizon)

    def measure(self) -> str:
        run, cfg, task = self.run, self.cfg, self.task
        figures = self.dev.figures(
            task.net,
            task.tokenizer,
            cfg.objective,
            cfg.pooling,
            cfg.max_length,
            self.device,
            self.precision,
            prompts=(cfg.prompt, cfg.document_prompt),
        )
        figure = primary(figures)
        loss = float(np.mean(run.eval_losses)) if run.eval_losses else None
        run.eval_losses = []
        run.curve.append(
            {"step": run.step, "epoch": round(run.step / run.steps_per_epoch, 3), "loss": loss}
            | {"figure": figure, "sets": figures}
        )
        if run.best is None or figure > run.best:
            run.best, run.best_step, run.bad_evals = figure, run.step, 0
            write_model(self.out, task)
        else:
            run.bad_evals += 1
        return f"dev at step {run.step}: {figure_line(run.curve[-1])}"

    def early_stop(self) -> str:
        patience = self.cfg.patience
        if patience > 0 and self.run.bad_evals >= patience:
            return f"early stop: no gain in {patience} evaluations"
        return ""

    def final_eval(self) -> bool:
        run = self.run
        return (
            bool(self.dev)
            and run.step == run.horizon
            and bool(run.curve)
            and run.curve[-1]["step"] != run.step
        )

    def save(self) -> None:
        self.save_state(self.cfg)
        write_card(self.out, CARD_FILE, _card(self.cfg, self.run, self.task, self.device))


def _card(cfg: TrainConfig, run: FinetuneState, task: Task, device: Any) -> dict[str, Any]:
    """`card.json`: what was trained on what, how, how long, and how it scored."""
    data = task.data
    kinds = {"cross": "cross-encoder", "rerank": "reranker"}
    return {
        "kind": kinds.get(cfg.objective, "bi-encoder"),
        "base_model": _name(cfg.model),
        "objective": cfg.objective,
        "output": (
            "AutoModelForSequenceClassification, one logit (sigmoid = probability)"
            if cfg.objective in CROSS_OBJECTIVES
            else f"encoder + sentence-transformers files, {cfg.pooling} pooling"
        ),
        "prompts": {"query": cfg.prompt, "document": cfg.document_prompt},
        **({"retriever_model": _name(cfg.retriever_model)} if cfg.retriever_model else {}),
        "data": {"train": data.sources, "kind": data.kind, "dev": [Path(p).name for p in cfg.dev]},
        "train_items": len(data),
        "hyperparameters": {k: v for k, v in asdict(cfg).items() if k not in ("pairs", "dev")},
        "device": device.type,
        "precision": task.precision,
        "steps": run.step,
        "horizon": run.horizon,
        "steps_per_epoch": run.steps_per_epoch,
        "epochs": round(run.step / run.steps_per_epoch, 3),
        "seconds_per_epoch": [round(s, 1) for s in run.epoch_seconds],
        "train_seconds": round(run.seconds, 1),
        "eval_seconds": round(run.eval_seconds, 1),
        "stopped": run.stopped,
        "dev_curve": run.curve,
        "dev_best": run.best,
        "best_step": run.best_step,
        "loss_log": run.log,
    }


def _name(model: str) -> str:
    """A local checkpoint by its folder name (no machine paths in cards), a hub id as is."""
    return Path(model).name if Path(model).exists() else model


def dev_sets(cfg: TrainConfig, device: Any, precision: str) -> DevSets | Any:
    """The dev data: labelled pairs and BEIR splits, or a reranker's dev queries with the
    retriever's candidates."""
    if cfg.objective == "rerank":
        from models.finetune_rerank import RerankDev

        return RerankDev(cfg, device, precision)
    return DevSets(cfg.dev, cfg.objective)


def finetune(opts: FinetuneOptions, say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run (or resume) fine-tuning into `opts.out`; returns the card."""
    if opts.freeze:
        return fit_frozen(opts, say)
    job = Finetuning(opts, say)
    job.train(job.cfg.lr, job.cfg.warmup, job.cfg.clip)
    run = job.run
    if not job.dev:
        write_model(job.out, job.task)
    say(
        f"step {run.step} of {run.horizon} ({run.stopped}); best dev {run.best} at step "
        f"{run.best_step}; checkpoint in {job.out}"
    )
    return json.loads((job.out / CARD_FILE).read_text())  # type: ignore[no-any-return]
