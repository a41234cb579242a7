"""What a fine-tuning run is given: `simsvc finetune`'s options, the settings that decide
its result (`TrainConfig`, recorded in the state and required unchanged on resume), and the
card's file name.

Both the training loop (`models/finetune.py`) and the frozen baseline
(`models/finetune_freeze.py`) read these, so they live below both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models.finetune_data import is_retrieval
from models.finetune_models import POOLINGS, st_pooling

OBJECTIVES = ("cosent", "mnrl", "cross")
CARD_FILE = "card.json"


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


def resolve_config(opts: FinetuneOptions) -> TrainConfig:
    """The run-deciding settings of `opts`, checked."""
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
