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

The dev figure (Spearman x100 on labelled pairs, nDCG@10 x100 on a BEIR split) is measured
before training, every `--eval-every` steps (default: each epoch) and at the end; the best
weights are kept in `--out` and training stops after `--patience` evaluations without a
gain. Resuming is exact: the state in `out/state/` holds the current weights, AdamW, the
step (the learning rate is a function of it), the data position (epoch and batch; each
epoch's order is a permutation seeded by (seed, epoch)), torch's RNG (dropout) and the
fp16 scaler. `card.json` records the data, settings, times and the dev curve.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.export_onnx import require_build_extra
from models.finetune_data import (
    PairData,
    both_orders,
    bucketed_batches,
    distinct_batches,
    epoch_order,
    is_retrieval,
    plain_batches,
    read_pair_data,
)
from models.finetune_eval import DevSets, figure_line, primary
from models.finetune_models import (
    POOLINGS,
    cosent_loss,
    cross_logits,
    embed,
    load_cross,
    load_encoder,
    mark_cross,
    mnrl_loss,
    st_max_length,
    st_pooling,
    tokenize,
    write_st_files,
)
from models.training import (
    adamw,
    autocast,
    check_same_config,
    grad_scaler,
    horizon_for,
    lr_factor,
    prepare_out,
    progress_note,
    quiet_transformers,
    read_state,
    resolve_device,
    resolve_precision,
    restore_state,
    save_state,
    step_seconds,
    update,
    warmup_steps,
)

log = logging.getLogger("simsvc.finetune")

OBJECTIVES = ("cosent", "mnrl", "cross")
STATE_DIR = "state"
CARD_FILE = "card.json"
STATE_VERSION = 1


@dataclass
class FinetuneOptions:
    """Everything `simsvc finetune` takes."""

    model: str
    pairs: list[Path]
    out: Path
    objective: str
    dev: list[Path] = field(default_factory=list)
    epochs: float | None = None
    time_budget: float | None = None
    batch_size: int = 32
    lr: float = 2e-5
    max_length: int = 128
    warmup: float = 0.1
    weight_decay: float = 0.01
    clip: float = 1.0
    scale: float = 20.0
    pooling: str = "auto"
    seed: int = 0
    eval_every: int = 0
    patience: int = 3
    length_window: int = 16
    freeze: bool = False
    head: str = "lr"
    resume: bool = False
    force: bool = False
    device: str = "auto"
    precision: str = "auto"
    stop_after: int | None = None
    log_every: int = 20
    save_every: int = 200
    threads: int = 0
    progress: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """What decides a run's result: recorded in the state and required unchanged on resume."""

    model: str
    pairs: list[str]
    dev: list[str]
    objective: str
    pooling: str
    batch_size: int
    lr: float
    max_length: int
    warmup: float
    weight_decay: float
    clip: float
    scale: float
    seed: int
    eval_every: int
    patience: int
    length_window: int


@dataclass
class RunState:
    """The mutable position of a run (saved with every checkpoint)."""

    horizon: int
    steps_per_epoch: int
    step: int = 0
    epoch: int = 0
    batch: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)
    epoch_clock: float = 0.0
    curve: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    log: list[dict[str, float]] = field(default_factory=list)
    recent: list[float] = field(default_factory=list)
    stopped: str = ""


# --- the objective's forward pass ------------------------------------------------------------


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

        a = [self.data.a[i] for i in rows]
        b = [self.data.b[i] for i in rows]
        target = torch.tensor(self.data.target[rows], dtype=torch.float32, device=self.device)
        with autocast(self.device, self.precision):
            if self.cfg.objective == "cross":
                logits = cross_logits(self.net, self._tensors(a, b))
                return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
            u = embed(self.net, self._tensors(a, None), self.cfg.pooling)
            v = embed(self.net, self._tensors(b, None), self.cfg.pooling)
        if self.cfg.objective == "mnrl":
            return mnrl_loss(u, v, self.cfg.scale)
        cos = torch.nn.functional.cosine_similarity(u, v, dim=-1)
        return cosent_loss(cos, target, self.cfg.scale)


def _resolve_config(opts: FinetuneOptions) -> TrainConfig:
    if opts.objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {opts.objective!r}")
    if opts.objective == "cross":
        pooling = "cls"
    elif opts.pooling == "auto":
        pooling = st_pooling(opts.model) or "mean"
    elif opts.pooling in POOLINGS:
        pooling = opts.pooling
    else:
        raise ValueError(f"pooling must be auto, mean or cls, got {opts.pooling!r}")
    if not 8 <= opts.max_length <= 512:
        raise ValueError(f"--max-length must be in 8..512, got {opts.max_length}")
    if opts.batch_size < 2:
        raise ValueError("--batch-size must be at least 2 (the losses compare pairs in a batch)")
    for path in opts.dev:
        if is_retrieval(path) and opts.objective != "mnrl":
            raise ValueError(f"--dev {path}: a BEIR split scores a bi-encoder (--objective mnrl)")
    return TrainConfig(
        model=opts.model,
        pairs=[str(Path(p).resolve()) for p in opts.pairs],
        dev=[str(Path(p).resolve()) for p in opts.dev],
        objective=opts.objective,
        pooling=pooling,
        batch_size=opts.batch_size,
        lr=opts.lr,
        max_length=opts.max_length,
        warmup=opts.warmup,
        weight_decay=opts.weight_decay,
        clip=opts.clip,
        scale=opts.scale,
        seed=opts.seed,
        eval_every=opts.eval_every,
        patience=opts.patience,
        length_window=opts.length_window,
    )


# --- output --------------------------------------------------------------------------------


def _write_model(out: Path, task: Task) -> None:
    """The servable checkpoint into `out`, written beside it first and moved in file by file."""
    tmp = out / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if task.cfg.objective == "cross":
        mark_cross(task.net)
    task.net.save_pretrained(str(tmp))
    task.tokenizer.save_pretrained(str(tmp))
    if task.cfg.objective != "cross":
        length = st_max_length(task.cfg.model) or task.cfg.max_length
        write_st_files(tmp, task.cfg.pooling, int(task.net.config.hidden_size), length)
    for item in sorted(tmp.rglob("*"), key=lambda p: len(p.parts)):
        target = out / item.relative_to(tmp)
        if item.is_dir():
            target.mkdir(exist_ok=True)
        else:
            item.replace(target)
    shutil.rmtree(tmp, ignore_errors=True)


def write_card(out: Path, card: dict[str, Any]) -> None:
    """`card.json`: what was trained on what, how, how long, and how it scored."""
    import torch
    import transformers

    card = {
        **card,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (out / CARD_FILE).write_text(json.dumps(card, indent=1, ensure_ascii=False))


def _card(
    cfg: TrainConfig, run: RunState, data: PairData, device: Any, precision: str
) -> dict[str, Any]:
    per_epoch = [round(s, 1) for s in run.epoch_seconds]
    return {
        "kind": "cross-encoder" if cfg.objective == "cross" else "bi-encoder",
        "base_model": Path(cfg.model).name if Path(cfg.model).exists() else cfg.model,
        "objective": cfg.objective,
        "output": (
            "AutoModelForSequenceClassification, one logit (sigmoid = probability)"
            if cfg.objective == "cross"
            else f"encoder + sentence-transformers files, {cfg.pooling} pooling"
        ),
        "data": {"train": data.sources, "kind": data.kind, "dev": [Path(p).name for p in cfg.dev]},
        "train_items": len(data),
        "hyperparameters": {k: v for k, v in asdict(cfg).items() if k not in ("pairs", "dev")},
        "device": device.type,
        "precision": precision,
        "steps": run.step,
        "horizon": run.horizon,
        "steps_per_epoch": run.steps_per_epoch,
        "epochs": round(run.step / run.steps_per_epoch, 3),
        "seconds_per_epoch": per_epoch,
        "train_seconds": round(run.train_seconds, 1),
        "eval_seconds": round(run.eval_seconds, 1),
        "stopped": run.stopped,
        "dev_curve": run.curve,
        "dev_best": run.best,
        "best_step": run.best_step,
        "loss_log": run.log,
    }


# --- training ------------------------------------------------------------------------------


def _build(cfg: TrainConfig) -> Any:
    """The network before training (a resumed run then loads its saved weights into it)."""
    return load_cross(cfg.model, cfg.seed) if cfg.objective == "cross" else load_encoder(cfg.model)


def finetune(opts: FinetuneOptions, say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run (or resume) fine-tuning into `opts.out`; returns the card."""
    require_build_extra()
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer

    started = time.monotonic()
    quiet_transformers()
    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    if opts.freeze:
        from models.finetune_freeze import fit_frozen

        return fit_frozen(opts, say)
    if opts.epochs is None and opts.time_budget is None and not opts.resume:
        raise ValueError("give --epochs, --time-budget or both")
    out = opts.out
    record = read_state(out / STATE_DIR, STATE_VERSION) if opts.resume else None
    cfg = _resolve_config(opts)
    if record:
        check_same_config(record["config"], cfg)
    prepare_out(out, opts.resume, opts.force, STATE_DIR)
    device = resolve_device(opts.device)
    precision = resolve_precision(opts.precision, device)

    data = read_pair_data([Path(p) for p in cfg.pairs], "train")
    if cfg.objective == "mnrl" and data.kind != "positive":
        data = _positives_only(data)
    if cfg.objective != "mnrl" and data.kind == "positive":
        raise ValueError(f"--objective {cfg.objective} learns from labels: give labelled pairs")
    if cfg.objective == "cross":
        data = both_orders(data)
    dev = DevSets(cfg.dev, cfg.objective)
    say(f"{len(data)} training items ({data.kind}), dev: {', '.join(n for n, _ in dev.sets)}")

    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{cfg.model}: a fast (Rust) tokenizer is needed")
    net = _build(cfg)
    net.to(device)
    net.train()
    task = Task(cfg, net, tokenizer, data, device, precision)
    optimizer = adamw(net, cfg.lr, cfg.weight_decay)
    scaler = grad_scaler(precision)
    batches = task.batches(0)
    if not batches:
        raise ValueError("too few training pairs for one batch")

    def evaluate(run: RunState) -> None:
        clock = time.monotonic()
        figures = dev.figures(
            net, tokenizer, cfg.objective, cfg.pooling, cfg.max_length, device, precision
        )
        run.eval_seconds += time.monotonic() - clock
        figure = primary(figures)
        loss = float(np.mean(run.recent)) if run.recent else None
        run.curve.append(
            {"step": run.step, "epoch": round(run.step / run.steps_per_epoch, 3), "loss": loss}
            | {"figure": figure, "sets": figures}
        )
        if run.best is None or figure > run.best:
            run.best, run.best_step, run.bad_evals = figure, run.step, 0
            _write_model(out, task)
        else:
            run.bad_evals += 1

    if record:
        run = RunState(**record["run"])
        run.stopped = ""
        restore_state(out / STATE_DIR, record, net, optimizer, scaler, device)
        batches = task.batches(run.epoch)
        say(f"resuming at step {run.step} of {run.horizon}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        run = RunState(horizon=1, steps_per_epoch=len(batches))
        if dev:
            evaluate(run)
            say(f"dev before training: {figure_line(run.curve[-1])}")
        if opts.epochs is not None:
            run.horizon = max(1, math.ceil(opts.epochs * len(batches)))
        else:
            assert opts.time_budget is not None
            per_step = step_seconds(net, lambda: task.loss(batches[0]), device)
            evals = run.eval_seconds * _evals_per_epoch(cfg, len(batches)) / len(batches)
            left = opts.time_budget - (time.monotonic() - started)
            run.horizon = horizon_for(left, per_step + evals)
            say(f"time budget {opts.time_budget:.0f} s at ~{per_step:.2f} s/step: {run.horizon}")
        torch.manual_seed(cfg.seed)

    warm = warmup_steps(cfg.warmup, run.horizon)
    bar = tqdm(
        total=run.horizon,
        initial=run.step,
        unit="step",
        disable=not opts.progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    note = progress_note(bar, say)

    def save() -> None:
        record = {"config": asdict(cfg), "run": asdict(run)}
        save_state(out / STATE_DIR, net, optimizer, scaler, record, STATE_VERSION)
        write_card(out, _card(cfg, run, data, device, precision))

    clock = time.monotonic()
    while run.step < run.horizon:
        if opts.stop_after is not None and run.step >= opts.stop_after:
            run.stopped = f"stop-after {opts.stop_after}"
            break
        if opts.time_budget is not None and time.monotonic() - started >= opts.time_budget:
            run.stopped = "time budget"
            break
        if run.batch >= len(batches):
            run.epoch, run.batch = run.epoch + 1, 0
            batches = task.batches(run.epoch)
        lr = cfg.lr * lr_factor(run.step + 1, run.horizon, warm)
        loss = task.loss(batches[run.batch])
        update(net, optimizer, scaler, loss, lr, cfg.clip)
        run.recent.append(float(loss.detach()))
        run.step += 1
        run.batch += 1
        now = time.monotonic()
        run.train_seconds += now - clock
        run.epoch_clock += now - clock
        clock = now
        bar.update(1)
        bar.set_postfix(
            loss=f"{np.mean(run.recent[-opts.log_every :]):.4f}",
            dev=f"{run.curve[-1]['figure']:.2f}" if run.curve else "-",
            lr=f"{lr:.1e}",
            refresh=False,
        )
        if run.step % opts.log_every == 0:
            run.log.append(
                {"step": run.step, "loss": float(np.mean(run.recent[-opts.log_every :]))}
            )
        epoch_end = run.batch >= len(batches)
        if epoch_end:
            run.epoch_seconds.append(run.epoch_clock)
            run.epoch_clock = 0.0
        due = run.step % cfg.eval_every == 0 if cfg.eval_every > 0 else epoch_end
        if dev and (due or run.step == run.horizon):
            evaluate(run)
            run.recent = []
            note(f"dev at step {run.step}: {figure_line(run.curve[-1])}")
            if cfg.patience > 0 and run.bad_evals >= cfg.patience:
                run.stopped = f"early stop: no gain in {cfg.patience} evaluations"
                clock = time.monotonic()
                break
            save()
            clock = time.monotonic()
        elif opts.save_every > 0 and run.step % opts.save_every == 0:
            save()
            clock = time.monotonic()
    bar.close()
    run.stopped = run.stopped or "done"
    if not dev:
        _write_model(out, task)
    elif run.step == run.horizon and run.curve and run.curve[-1]["step"] != run.step:
        evaluate(run)
    save()
    say(
        f"step {run.step} of {run.horizon} ({run.stopped}); best dev {run.best} at step "
        f"{run.best_step}; checkpoint in {out}"
    )
    return json.loads((out / CARD_FILE).read_text())  # type: ignore[no-any-return]


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


def _evals_per_epoch(cfg: TrainConfig, steps_per_epoch: int) -> int:
    return 1 if cfg.eval_every <= 0 else max(1, steps_per_epoch // cfg.eval_every)
