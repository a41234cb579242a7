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

RERANK_LOSSES = ("softmax", "bce")

OBJECTIVES = ("cosent", "mnrl", "cross", "rerank")
CROSS_OBJECTIVES = ("cross", "rerank")
"""The objectives that train a sequence classifier over both texts read at once."""
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
    prompt_name: str | None = None
    no_prompt: bool = False
    retriever_model: str | None = None
    negatives: int = 4
    negative_depth: int = 30
    rerank_candidates: int = 20
    rerank_loss: str = "softmax"


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
    prompt: str = ""
    """Bi-encoders: the text prepended to each text (pairs, queries), as the bundle's query
    prompt is when served."""
    document_prompt: str = ""
    """Bi-encoders: the text prepended to MNRL positives and BEIR dev documents."""
    retriever_model: str = ""
    """rerank: the bi-encoder whose hybrid ranking gives negatives and dev candidates."""
    negatives: int = 4
    negative_depth: int = 30
    rerank_candidates: int = 20
    rerank_loss: str = "softmax"


def resolve_config(opts: FinetuneOptions) -> TrainConfig:
    """The run-deciding settings of `opts`, checked."""
    if opts.objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {opts.objective!r}")
    if opts.objective in CROSS_OBJECTIVES:
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
        if is_retrieval(path) and opts.objective not in ("mnrl", "rerank"):
            raise ValueError(
                f"--dev {path}: a BEIR split scores --objective mnrl or rerank, "
                f"not {opts.objective}"
            )
    if opts.objective == "rerank":
        if opts.rerank_loss not in RERANK_LOSSES:
            raise ValueError(f"--rerank-loss must be one of {RERANK_LOSSES}")
        if opts.negatives < 1 or opts.negative_depth < opts.negatives:
            raise ValueError("--negatives must be >= 1 and --negative-depth >= --negatives")
        if opts.rerank_candidates < 1:
            raise ValueError("--rerank-candidates must be >= 1")
    prompt, document_prompt = bi_prompts(opts)
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
        prompt=prompt,
        document_prompt=document_prompt,
        retriever_model=(opts.retriever_model or opts.model) if opts.objective == "rerank" else "",
        negatives=opts.negatives,
        negative_depth=opts.negative_depth,
        rerank_candidates=opts.rerank_candidates,
        rerank_loss=opts.rerank_loss,
    )


def bi_prompts(opts: FinetuneOptions) -> tuple[str, str]:
    """The query and document prompt texts a bi-encoder trains with: the checkpoint's
    (config_sentence_transformers.json, resolved as `simsvc build` resolves them), so training
    sees text as the service will serve it; `--prompt-name` picks the query one, `--no-prompt`
    none. Cross-encoders read raw text."""
    if opts.objective in CROSS_OBJECTIVES:
        if opts.prompt_name is not None:
            raise ValueError("--prompt-name is for bi-encoders (cosent, mnrl)")
        return "", ""
    if opts.no_prompt:
        return "", ""
    from models.prompts import PromptOptions, read_st_prompts, resolve_prompts

    prompts = resolve_prompts(
        *read_st_prompts(opts.model), PromptOptions(query_prompt_name=opts.prompt_name)
    )
    texts = prompts.prompts
    return texts.get(prompts.query_name or "", ""), texts.get(prompts.document_name or "", "")
