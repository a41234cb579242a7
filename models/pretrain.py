"""`simsvc pretrain`: masked LM + next-sentence prediction on a corpus.

Continued pretraining adapts a BERT checkpoint to a domain corpus before a bundle is built
from it; from a config it pretrains from random weights. The output directory is a normal
Hugging Face checkpoint (`BertForPreTraining`: encoder plus MLM and NSP heads, tokenizer)
that `simsvc build --model` takes, plus `state/` to resume from and `pretrain_log.json`.

Resuming is exact: the state holds the weights, the optimizer, the step (the learning rate
is a function of it), the data position (epoch, instances consumed; the stream is replayed
to it), the masking RNG, torch's RNG (dropout) and the AMP grad scaler. A run cut in two
ends with the same parameters as one that never stopped. The loop, the schedule and the
checkpoints are the harness's (`models/training_run.py`); the network and its losses are in
`models/pretrain_model.py`, the held-out figures and `simsvc evaluate-mlm` in
`models/pretrain_eval.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from models.checkpoint_files import copy_base_files
from models.pretrain_data import (
    POOL_CHARS,
    Batch,
    InstanceCursor,
    collate,
    mask_batch,
    stream_instances,
)
from models.pretrain_eval import LOG_FILE, heldout_line
from models.pretrain_model import (
    batch_loss,
    evaluate_batches,
    load_pretraining_checkpoint,
    masked_batches,
    require_bert,
    text_encoder,
    token_info,
)
from models.training_run import RunState, TrainingRun, write_card

log = logging.getLogger("simsvc.pretrain")

STATE_VERSION = 2


@dataclass
class PretrainOptions:
    """Everything `simsvc pretrain` takes."""

    corpus: list[Path]
    out: Path
    init: str | None = None
    config: Path | None = None
    tokenizer: str | None = None
    max_length: int = 128
    batch_size: int = 32
    steps: int | None = None
    time_budget: float | None = None
    lr: float = 1e-4
    warmup: float = 0.06
    weight_decay: float = 0.01
    clip: float = 1.0
    seed: int = 0
    heldout: float = 0.02
    eval_instances: int = 1000
    pool_chars: int = POOL_CHARS
    resume: bool = False
    force: bool = False
    device: str = "auto"
    precision: str = "auto"
    stop_after: int | None = None
    save_every: int = 500
    eval_every: int = 500
    log_every: int = 50
    threads: int = 0
    progress: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """What decides a run's result: recorded in the state and required unchanged on resume."""

    corpus: list[str]
    source: str
    tokenizer: str
    max_length: int
    batch_size: int
    lr: float
    warmup: float
    weight_decay: float
    clip: float
    seed: int
    heldout: float
    eval_instances: int
    pool_chars: int


@dataclass
class PretrainState(RunState):
    """The harness's run state plus the data position and the held-out curve."""

    epoch: int = 0
    consumed: int = 0
    heldout: list[dict[str, float]] = field(default_factory=list)
    heads_initialised: list[str] = field(default_factory=list)


def _resolve_config(opts: PretrainOptions, recorded: dict[str, Any] | None) -> TrainConfig:
    source = opts.init or (str(opts.config) if opts.config else None)
    tokenizer = opts.tokenizer or opts.init
    if source is None and recorded:
        source = recorded["source"]
    if tokenizer is None and recorded:
        tokenizer = recorded["tokenizer"]
    if source is None:
        raise ValueError("give --init CHECKPOINT (continue pretraining) or --config CONFIG.json")
    if tokenizer is None:
        assert opts.config is not None
        if (opts.config.parent / "vocab.txt").is_file() or (
            opts.config.parent / "tokenizer.json"
        ).is_file():
            tokenizer = str(opts.config.parent)
        else:
            raise ValueError("--config needs --tokenizer DIR (none beside the config)")
    if not 8 <= opts.max_length <= 512:
        raise ValueError(f"--max-length must be in 8..512, got {opts.max_length}")
    return TrainConfig(
        corpus=[str(Path(p).resolve()) for p in opts.corpus],
        source=source,
        tokenizer=tokenizer,
        max_length=opts.max_length,
        batch_size=opts.batch_size,
        lr=opts.lr,
        warmup=opts.warmup,
        weight_decay=opts.weight_decay,
        clip=opts.clip,
        seed=opts.seed,
        heldout=opts.heldout,
        eval_instances=opts.eval_instances,
        pool_chars=opts.pool_chars,
    )


def _build_model(opts: PretrainOptions, cfg: TrainConfig, out: Path) -> tuple[Any, list[str]]:
    """The network to train: from the resume state's config, the init checkpoint, or a
    config with random weights (seeded)."""
    import torch
    from transformers import BertConfig, BertForPreTraining

    if opts.resume:
        blank: Any = BertForPreTraining(BertConfig.from_pretrained(str(out)))
        return blank.float(), []
    torch.manual_seed(cfg.seed)  # heads missing from --init start random too
    if opts.init:
        return load_pretraining_checkpoint(opts.init)
    assert opts.config is not None
    config = BertConfig.from_json_file(str(opts.config))
    require_bert(config, str(opts.config))
    fresh: Any = BertForPreTraining(config)
    return fresh.float(), []


class Pretraining(TrainingRun[PretrainState]):
    """Pretraining's part of a run: masked batches streamed from the corpus, the held-out
    split's figures, and the checkpoint with its log."""

    def __init__(self, opts: PretrainOptions, say: Callable[[str], None]) -> None:
        super().__init__(opts, STATE_VERSION, say)
        import torch
        from transformers import AutoTokenizer

        if (opts.steps is None) == (opts.time_budget is None) and not opts.resume:
            raise ValueError("give exactly one of --steps and --time-budget")
        if opts.init and opts.config:
            raise ValueError("give --init or --config, not both")
        record = self.record
        self.cfg = cfg = _resolve_config(opts, record["config"] if record else None)
        self.open(cfg)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.out) if record else cfg.tokenizer)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(f"{cfg.tokenizer}: a fast (Rust) tokenizer is needed")
        net, missing = _build_model(opts, cfg, self.out)
        self.tokens = token_info(self.tokenizer, int(net.config.vocab_size))
        self.encode = text_encoder(self.tokenizer)
        if missing:
            say(f"heads not in the checkpoint start from random weights: {', '.join(missing)}")
        self.heldout_batches = self._heldout_batches()
        self.eval_every = opts.eval_every
        self.attach(net, cfg.lr, cfg.weight_decay)
        self.mask_rng = np.random.default_rng([cfg.seed, 2])
        resumed = self.resume(PretrainState)
        if resumed is not None:
            assert record is not None
            if opts.steps is not None and opts.steps != resumed.horizon:
                raise ValueError(f"--steps {opts.steps} differs from the run's {resumed.horizon}")
            self.mask_rng.bit_generator.state = record["mask_rng"]
            self.run = resumed
        else:
            self.run = PretrainState(heads_initialised=missing)
            self.out.mkdir(parents=True, exist_ok=True)
            self.tokenizer.save_pretrained(str(self.out))
            copy_base_files(cfg.tokenizer, self.out, prompts=False)  # its own tokenizer.json
            if self.heldout_batches:
                say(self.evaluate())
            every = 1 / opts.eval_every if self.heldout_batches and opts.eval_every > 0 else 0.0
            self.run.horizon = self.plan(opts.steps, every)
            torch.manual_seed(cfg.seed)
        self.cursor = InstanceCursor(
            lambda epoch: self._stream("train", epoch), self.run.epoch, self.run.consumed
        )

    def _stream(self, part: str, epoch: int) -> Iterator[Any]:
        cfg = self.cfg
        return stream_instances(
            [Path(p) for p in cfg.corpus],
            self.encode,
            self.tokens.word_start,
            cfg.max_length,
            cfg.seed,
            epoch=epoch,
            part=part,
            heldout=cfg.heldout,
            pool_chars=cfg.pool_chars,
        )

    def _heldout_batches(self) -> list[Batch]:
        cfg = self.cfg
        if cfg.heldout <= 0 or cfg.eval_instances <= 0:
            return []
        try:
            sample = list(islice(self._stream("heldout", 0), cfg.eval_instances))
        except ValueError as exc:
            raise ValueError(f"held-out split: {exc}; raise --heldout or set it to 0") from exc
        self.say(f"held-out split: {len(sample)} instances")
        rng = np.random.default_rng([cfg.seed, 1])
        return masked_batches(sample, self.tokens, cfg.batch_size, rng)

    def batch_loss(self) -> tuple[Any, dict[str, float]]:
        instances = self.cursor.take(self.cfg.batch_size)
        self.run.epoch, self.run.consumed = self.cursor.epoch, self.cursor.consumed
        batch = mask_batch(collate(instances, self.tokens), self.tokens, self.mask_rng)
        return batch_loss(self.net, batch, self.device, self.precision)

    def probe_loss(self) -> Any:
        cfg, tokens = self.cfg, self.tokens
        instances = list(islice(self._stream("train", 0), cfg.batch_size))
        probe = mask_batch(collate(instances, tokens), tokens, np.random.default_rng([cfg.seed, 3]))
        return batch_loss(self.net, probe, self.device, self.precision)[0]

    def stepped(self) -> bool:
        return (
            bool(self.heldout_batches)
            and self.eval_every > 0
            and self.run.step % self.eval_every == 0
        )

    def measure(self) -> str:
        figures = evaluate_batches(self.net, self.heldout_batches, self.device, self.precision)
        self.run.heldout.append({"step": self.run.step, **figures})
        return heldout_line(self.run.heldout[-1])

    def final_eval(self) -> bool:
        done = self.run.heldout
        return bool(self.heldout_batches) and (not done or done[-1]["step"] != self.run.step)

    def save(self) -> None:
        """The HF checkpoint, the resume state (swapped in whole) and the log."""
        self.net.save_pretrained(str(self.out))
        self.save_state(self.cfg, {"mask_rng": self.mask_rng.bit_generator.state})
        summary = {k: v for k, v in asdict(self.run).items() if k != "recent"}
        write_card(self.out, LOG_FILE, {"config": asdict(self.cfg), **summary})


def pretrain(opts: PretrainOptions, say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run (or resume) pretraining into `opts.out`; returns the run summary."""
    job = Pretraining(opts, say)
    job.train(job.cfg.lr, job.cfg.warmup, job.cfg.clip)
    run = job.run
    say(
        f"step {run.step} of {run.horizon} ({run.stopped}), {run.seconds:.0f} s of training; "
        f"checkpoint in {job.out}"
    )
    return {"out": str(job.out), "device": job.device.type, "precision": job.precision} | asdict(
        run
    )
