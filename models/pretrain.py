"""`simsvc pretrain` and `simsvc evaluate-mlm`: masked LM + next-sentence prediction.

Continued pretraining adapts a BERT checkpoint to a domain corpus before a bundle is built
from it; from a config it pretrains from random weights. The output directory is a normal
Hugging Face checkpoint (`BertForPreTraining`: encoder plus MLM and NSP heads, tokenizer)
that `simsvc build --model` takes, plus `state/` to resume from and `pretrain_log.json`.

Resuming is exact: the state holds the weights, the optimizer, the step (the learning rate
is a function of it), the data position (epoch, instances consumed; the stream is replayed
to it), the masking RNG, torch's RNG (dropout) and the AMP grad scaler. A run cut in two
ends with the same parameters as one that never stopped.

The MLM head runs on the chosen positions only (as BERT's original code gathers them), not
on every position: on CPU the 30 k-way output layer over all tokens would dominate a step.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from models.export_onnx import require_build_extra
from models.pretrain_data import (
    IGNORE,
    POOL_CHARS,
    Batch,
    Encode,
    InstanceCursor,
    TokenInfo,
    collate,
    mask_batch,
    stream_instances,
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

log = logging.getLogger("simsvc.pretrain")

STATE_DIR = "state"
LOG_FILE = "pretrain_log.json"
STATE_VERSION = 1


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
class RunState:
    """The mutable position of a run (saved with every checkpoint)."""

    horizon: int
    step: int = 0
    epoch: int = 0
    consumed: int = 0
    seconds: float = 0.0
    log: list[dict[str, float]] = field(default_factory=list)
    heldout: list[dict[str, float]] = field(default_factory=list)
    heads_initialised: list[str] = field(default_factory=list)
    stopped: str = ""
    recent: list[dict[str, float]] = field(default_factory=list)
    """Per-step figures since the last log line (so a resumed run logs the same averages)."""


# --- vocabulary and schedule -------------------------------------------------------------


def token_info(tokenizer: Any, vocab_size: int) -> TokenInfo:
    """The ids masking and instance creation need, from a Hugging Face tokenizer."""
    ids: dict[str, Any] = {
        name: getattr(tokenizer, f"{name}_token_id", None) for name in ("cls", "sep", "pad", "mask")
    }
    if any(v is None for v in ids.values()):
        raise ValueError(f"the tokenizer lacks special tokens for pretraining: {ids}")
    size = len(tokenizer)
    if size > vocab_size:
        raise ValueError(f"tokenizer has {size} tokens but the model's vocabulary is {vocab_size}")
    special = np.asarray(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    return TokenInfo(
        cls_id=int(ids["cls"]),
        sep_id=int(ids["sep"]),
        pad_id=int(ids["pad"]),
        mask_id=int(ids["mask"]),
        special_ids=special,
        random_ids=np.setdiff1d(np.arange(size, dtype=np.int64), special),
        word_start=np.asarray([not str(p).startswith("##") for p in pieces], dtype=np.bool_),
    )


def text_encoder(tokenizer: Any) -> Encode:
    """Batch tokenization without special tokens, truncation or padding (the Rust backend)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()

    def encode(texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]

    return encode


# --- model --------------------------------------------------------------------------------


def _require_bert(config: Any, where: str) -> None:
    if getattr(config, "model_type", None) != "bert":
        raise ValueError(
            f"{where}: pretraining needs a BERT model (MLM + NSP heads), "
            f"got model_type {getattr(config, 'model_type', None)!r}"
        )


def load_pretraining_checkpoint(model: str) -> tuple[Any, list[str]]:
    """`BertForPreTraining` in fp32 from a checkpoint, and the head weights it lacked
    (those start from random values)."""
    import torch
    from transformers import AutoConfig, BertForPreTraining

    quiet_transformers()
    _require_bert(AutoConfig.from_pretrained(model), model)
    loaded: Any = BertForPreTraining.from_pretrained(
        model, dtype=torch.float32, output_loading_info=True
    )
    net, info = loaded
    missing = sorted(info.get("missing_keys", []))
    encoder_missing = [k for k in missing if not k.startswith("cls.")]
    if encoder_missing:
        raise ValueError(f"{model}: encoder weights missing from the checkpoint: {encoder_missing}")
    return net.float(), missing


def _tensors(batch: Batch, device: Any) -> dict[str, Any]:
    import torch

    return {
        name: torch.from_numpy(getattr(batch, name)).to(device)
        for name in (
            "input_ids",
            "token_type_ids",
            "attention_mask",
            "next_sentence_label",
            "labels",
        )
    }


def _losses(net: Any, t: dict[str, Any]) -> dict[str, Any]:
    """MLM and NSP losses, and correct-prediction counts, with the MLM head run only on the
    chosen positions."""
    import torch.nn.functional as F

    out = net.bert(
        input_ids=t["input_ids"],
        token_type_ids=t["token_type_ids"],
        attention_mask=t["attention_mask"],
    )
    chosen = t["labels"] != IGNORE
    targets = t["labels"][chosen]
    mlm_logits = net.cls.predictions(out.last_hidden_state[chosen]).float()
    nsp_logits = net.cls.seq_relationship(out.pooler_output).float()
    n = int(targets.numel())
    mlm_sum = F.cross_entropy(mlm_logits, targets, reduction="sum")
    nsp = F.cross_entropy(nsp_logits, t["next_sentence_label"])
    return {
        "mlm": mlm_sum / max(n, 1),
        "mlm_sum": mlm_sum,
        "nsp": nsp,
        "masked": n,
        "mlm_correct": int((mlm_logits.argmax(-1) == targets).sum()),
        "nsp_correct": int((nsp_logits.argmax(-1) == t["next_sentence_label"]).sum()),
        "rows": int(nsp_logits.shape[0]),
    }


def evaluate_batches(
    net: Any, batches: list[Batch], device: Any, precision: str = "fp32"
) -> dict[str, float]:
    """MLM accuracy over the chosen tokens, NSP accuracy over the pairs, and both losses."""
    import torch

    was_training = net.training
    net.eval()
    masked = mlm_correct = rows = nsp_correct = 0
    mlm_sum = nsp_sum = 0.0
    with torch.no_grad(), autocast(device, precision):
        for batch in batches:
            r = _losses(net, _tensors(batch, device))
            masked += r["masked"]
            mlm_correct += r["mlm_correct"]
            rows += r["rows"]
            nsp_correct += r["nsp_correct"]
            mlm_sum += float(r["mlm_sum"])
            nsp_sum += float(r["nsp"]) * r["rows"]
    net.train(was_training)
    return {
        "instances": rows,
        "masked_tokens": masked,
        "mlm_acc": mlm_correct / max(masked, 1),
        "nsp_acc": nsp_correct / max(rows, 1),
        "mlm_loss": mlm_sum / max(masked, 1),
        "nsp_loss": nsp_sum / max(rows, 1),
    }


def _masked_batches(
    instances: list[Any], tokens: TokenInfo, batch_size: int, rng: np.random.Generator
) -> list[Batch]:
    return [
        mask_batch(collate(instances[i : i + batch_size], tokens), tokens, rng)
        for i in range(0, len(instances), batch_size)
    ]


# --- checkpoint state ---------------------------------------------------------------------


def _save(
    out: Path,
    net: Any,
    optimizer: Any,
    scaler: Any,
    mask_rng: np.random.Generator,
    cfg: TrainConfig,
    run: RunState,
) -> None:
    """Write the HF checkpoint and the resume state (swapped in whole, never half-written)."""
    net.save_pretrained(str(out))
    record = {"config": asdict(cfg), "run": asdict(run), "mask_rng": mask_rng.bit_generator.state}
    save_state(out / STATE_DIR, net, optimizer, scaler, record, STATE_VERSION)
    summary = {k: v for k, v in asdict(run).items() if k != "recent"}
    (out / LOG_FILE).write_text(json.dumps({"config": asdict(cfg), **summary}, indent=1))


# --- training -----------------------------------------------------------------------------


def _total_loss(net: Any, batch: Batch, device: Any, precision: str) -> Any:
    with autocast(device, precision):
        r = _losses(net, _tensors(batch, device))
        return r["mlm"] + r["nsp"]


def _train_step(
    net: Any,
    optimizer: Any,
    scaler: Any,
    batch: Batch,
    lr: float,
    clip: float,
    device: Any,
    precision: str,
) -> dict[str, float]:
    """One AdamW update at learning rate `lr`, clipped; returns the batch's figures."""
    with autocast(device, precision):
        r = _losses(net, _tensors(batch, device))
        loss = r["mlm"] + r["nsp"]
    update(net, optimizer, scaler, loss, lr, clip)
    return {
        "mlm": float(r["mlm"].detach()),
        "nsp": float(r["nsp"].detach()),
        "mlm_acc": r["mlm_correct"] / max(r["masked"], 1),
        "nsp_acc": r["nsp_correct"] / r["rows"],
    }


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
    _require_bert(config, str(opts.config))
    fresh: Any = BertForPreTraining(config)
    return fresh.float(), []


def pretrain(opts: PretrainOptions, say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run (or resume) pretraining into `opts.out`; returns the run summary."""
    require_build_extra()
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer

    started = time.monotonic()
    quiet_transformers()
    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    if (opts.steps is None) == (opts.time_budget is None) and not opts.resume:
        raise ValueError("give exactly one of --steps and --time-budget")
    if opts.init and opts.config:
        raise ValueError("give --init or --config, not both")
    out = opts.out
    record = read_state(out / STATE_DIR, STATE_VERSION) if opts.resume else None
    cfg = _resolve_config(opts, record["config"] if record else None)
    if record:
        check_same_config(record["config"], cfg)
    prepare_out(out, opts.resume, opts.force, STATE_DIR)
    device = resolve_device(opts.device)
    precision = resolve_precision(opts.precision, device)

    tokenizer = AutoTokenizer.from_pretrained(str(out) if record else cfg.tokenizer)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{cfg.tokenizer}: a fast (Rust) tokenizer is needed")
    net, missing = _build_model(opts, cfg, out)
    tokens = token_info(tokenizer, int(net.config.vocab_size))
    encode = text_encoder(tokenizer)
    if missing:
        say(f"heads not in the checkpoint start from random weights: {', '.join(missing)}")

    def stream(part: str, epoch: int) -> Iterator[Any]:
        return stream_instances(
            [Path(p) for p in cfg.corpus],
            encode,
            tokens.word_start,
            cfg.max_length,
            cfg.seed,
            epoch=epoch,
            part=part,
            heldout=cfg.heldout,
            pool_chars=cfg.pool_chars,
        )

    heldout: list[Batch] = []
    if cfg.heldout > 0 and cfg.eval_instances > 0:
        try:
            sample = list(islice(stream("heldout", 0), cfg.eval_instances))
        except ValueError as exc:
            raise ValueError(f"held-out split: {exc}; raise --heldout or set it to 0") from exc
        heldout = _masked_batches(
            sample, tokens, cfg.batch_size, np.random.default_rng([cfg.seed, 1])
        )
        say(f"held-out split: {len(sample)} instances")

    net.to(device)
    net.train()
    optimizer = adamw(net, cfg.lr, cfg.weight_decay)
    scaler = grad_scaler(precision)
    mask_rng = np.random.default_rng([cfg.seed, 2])
    if record:
        run = RunState(**record["run"])
        run.stopped = ""
        if opts.steps is not None and opts.steps != run.horizon:
            raise ValueError(f"--steps {opts.steps} differs from the run's {run.horizon}")
        restore_state(out / STATE_DIR, record, net, optimizer, scaler, device)
        mask_rng.bit_generator.state = record["mask_rng"]
        say(f"resuming at step {run.step} of {run.horizon}")
    else:
        if opts.steps is not None:
            horizon = opts.steps
        else:
            assert opts.time_budget is not None
            probe = mask_batch(
                collate(list(islice(stream("train", 0), cfg.batch_size)), tokens),
                tokens,
                np.random.default_rng([cfg.seed, 3]),
            )
            per_step = step_seconds(net, lambda: _total_loss(net, probe, device, precision), device)
            horizon = horizon_for(opts.time_budget - (time.monotonic() - started), per_step)
            say(f"time budget {opts.time_budget:.0f} s at ~{per_step:.3f} s/step: {horizon} steps")
        run = RunState(horizon=horizon, heads_initialised=missing)
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(out))
        torch.manual_seed(cfg.seed)
        if heldout:
            run.heldout.append({"step": 0, **evaluate_batches(net, heldout, device, precision)})
            say(_heldout_line(run.heldout[-1]))

    cursor = InstanceCursor(lambda epoch: stream("train", epoch), run.epoch, run.consumed)
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
    clock = time.monotonic()
    while run.step < run.horizon:
        if opts.stop_after is not None and run.step >= opts.stop_after:
            run.stopped = f"stop-after {opts.stop_after}"
            break
        if opts.time_budget is not None and time.monotonic() - started >= opts.time_budget:
            run.stopped = "time budget"
            break
        batch = mask_batch(collate(cursor.take(cfg.batch_size), tokens), tokens, mask_rng)
        lr = cfg.lr * lr_factor(run.step + 1, run.horizon, warm)
        run.recent.append(
            _train_step(net, optimizer, scaler, batch, lr, cfg.clip, device, precision)
        )
        run.step += 1
        run.epoch, run.consumed = cursor.epoch, cursor.consumed
        avg = {k: float(np.mean([w[k] for w in run.recent])) for k in run.recent[0]}
        bar.update(1)
        bar.set_postfix(
            loss=f"{avg['mlm'] + avg['nsp']:.3f}",
            mlm_acc=f"{avg['mlm_acc']:.3f}",
            nsp_acc=f"{avg['nsp_acc']:.3f}",
            lr=f"{lr:.2e}",
            refresh=False,
        )
        now = time.monotonic()
        if run.step % opts.log_every == 0:
            run.log.append(
                {"step": run.step, "t": round(run.seconds + now - clock, 1), "lr": lr, **avg}
            )
            run.recent = []
        if heldout and opts.eval_every > 0 and run.step % opts.eval_every == 0:
            run.heldout.append(
                {"step": run.step, **evaluate_batches(net, heldout, device, precision)}
            )
            note(_heldout_line(run.heldout[-1]))
        if opts.save_every > 0 and run.step % opts.save_every == 0 and run.step < run.horizon:
            run.seconds += now - clock
            clock = now
            _save(out, net, optimizer, scaler, mask_rng, cfg, run)
    bar.close()
    run.seconds += time.monotonic() - clock
    if heldout and (not run.heldout or run.heldout[-1]["step"] != run.step):
        run.heldout.append({"step": run.step, **evaluate_batches(net, heldout, device, precision)})
        say(_heldout_line(run.heldout[-1]))
    run.stopped = run.stopped or "done"
    _save(out, net, optimizer, scaler, mask_rng, cfg, run)
    say(
        f"step {run.step} of {run.horizon} ({run.stopped}), {run.seconds:.0f} s of training; "
        f"checkpoint in {out}"
    )
    return {"out": str(out), "device": device.type, "precision": precision, **asdict(run)}


def _heldout_line(figures: dict[str, float]) -> str:
    return (
        f"held-out at step {int(figures['step'])}: MLM accuracy {100 * figures['mlm_acc']:.1f} %, "
        f"NSP accuracy {100 * figures['nsp_acc']:.1f} % ({int(figures['instances'])} pairs)"
    )


# --- evaluation ---------------------------------------------------------------------------


def recorded_heldout(model_dir: Path) -> dict[str, float] | None:
    """The held-out MLM/NSP accuracy a checkpoint's own training recorded beside it, if any
    (this pipeline's `pretrain_log.json`, or a `training_log.json` with an `eval` block)."""
    ours = model_dir / LOG_FILE
    if ours.is_file():
        figures = json.loads(ours.read_text()).get("heldout") or []
        if figures:
            last = figures[-1]
            return {"mlm_acc": float(last["mlm_acc"]), "nsp_acc": float(last["nsp_acc"])}
    theirs = model_dir / "training_log.json"
    if theirs.is_file():
        block = json.loads(theirs.read_text()).get("eval") or {}
        if "heldout_mlm_acc" in block and "heldout_nsp_acc" in block:
            return {
                "mlm_acc": float(block["heldout_mlm_acc"]),
                "nsp_acc": float(block["heldout_nsp_acc"]),
            }
    return None


def evaluate_mlm(
    model: str,
    corpus: list[Path],
    instances: int = 4000,
    max_length: int = 128,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "auto",
    pool_chars: int = POOL_CHARS,
    threads: int = 0,
) -> dict[str, Any]:
    """MLM and NSP accuracy of a checkpoint on the first `instances` pairs of a corpus (the
    training recipe's instances and masking, seeded; fp32)."""
    require_build_extra()
    import torch
    from transformers import AutoTokenizer

    if threads > 0:
        torch.set_num_threads(threads)
    net, missing = load_pretraining_checkpoint(model)
    if missing:
        raise ValueError(f"{model} has no trained MLM/NSP heads (missing: {', '.join(missing)})")
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokens = token_info(tokenizer, int(net.config.vocab_size))
    sample = list(
        islice(
            stream_instances(
                corpus,
                text_encoder(tokenizer),
                tokens.word_start,
                max_length,
                seed,
                pool_chars=pool_chars,
            ),
            instances,
        )
    )
    if not sample:
        raise ValueError("the corpus yields no instances")
    where = resolve_device(device)
    net.to(where)
    batches = _masked_batches(sample, tokens, batch_size, np.random.default_rng([seed, 1]))
    figures = evaluate_batches(net, batches, where)
    own = recorded_heldout(Path(model)) if Path(model).is_dir() else None
    return {
        "model": model,
        "corpus": [Path(p).name for p in corpus],
        "max_length": max_length,
        "seed": seed,
        "random_next_share": float(np.mean([x.is_random_next for x in sample])),
        **figures,
        "own_heldout": own,
    }


def format_mlm(figures: dict[str, Any]) -> str:
    """One readable block for `simsvc evaluate-mlm`."""
    lines = [
        f"{figures['model']} on {', '.join(figures['corpus'])}: {figures['instances']} pairs "
        f"(max length {figures['max_length']}, seed {figures['seed']}), "
        f"{figures['masked_tokens']} masked tokens",
        f"  MLM accuracy {100 * figures['mlm_acc']:.1f} %  (loss {figures['mlm_loss']:.3f})",
        f"  NSP accuracy {100 * figures['nsp_acc']:.1f} %  (loss {figures['nsp_loss']:.3f})",
    ]
    own = figures.get("own_heldout")
    if own:
        lines.append(
            f"  its own held-out split: MLM {100 * own['mlm_acc']:.1f} %, "
            f"NSP {100 * own['nsp_acc']:.1f} %"
        )
    return "\n".join(lines)
