"""What every training loop here shares: device and precision, AdamW and its schedule, one
update step, and a resume state that is swapped in whole.

`simsvc pretrain` (MLM + NSP) and `simsvc finetune` (CoSENT, MNRL, cross-encoder) both use
it, so the two cannot drift apart in how they clip, schedule, checkpoint or resume.

A saved state is a folder: the weights and the AdamW moments as safetensors, torch's RNG
state (CPU and CUDA), and `state.json` with the run's own record (its configuration and
position, any numpy RNG states, the fp16 grad scaler). It is written beside the target and
renamed into place, so a crash leaves either the old state or the new one.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

BETAS = (0.9, 0.999)
ADAM_EPS = 1e-6
NO_DECAY = ("bias", "LayerNorm.weight")
HORIZON_MARGIN = 0.9
"""Share of a time budget the estimated step count may fill (evaluation, saving, noise)."""


def quiet_transformers() -> None:
    """No hub progress bars or load warnings in our own progress output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def resolve_device(name: str) -> Any:
    """`auto` picks CUDA when present; `cuda` without a GPU is an error, not a fallback."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def resolve_precision(name: str, device: Any) -> str:
    """fp32 on CPU; bf16 (else fp16) autocast on GPU."""
    import torch

    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {name!r}")
    if name == "fp16" and device.type != "cuda":
        raise ValueError("fp16 mixed precision needs a GPU")
    return name


def autocast(device: Any, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed-precision context for `precision` (a no-op for fp32)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str) -> Any:
    """fp16 needs a loss scaler; bf16 and fp32 do not."""
    import torch

    return torch.amp.GradScaler("cuda") if precision == "fp16" else None


def adamw(net: Any, lr: float, weight_decay: float) -> Any:
    """AdamW over the trainable parameters, with no weight decay on biases and LayerNorm
    weights (BERT's choice)."""
    import torch

    decay: list[Any] = []
    no_decay: list[Any] = []
    for name, p in net.named_parameters():
        if p.requires_grad:
            (no_decay if any(n in name for n in NO_DECAY) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS, eps=ADAM_EPS)


def lr_factor(step: int, horizon: int, warmup_steps: int) -> float:
    """Peak-rate multiplier for update `step` (1-based): linear warm-up, then linear decay
    that would reach zero one step after the horizon."""
    if step <= warmup_steps:
        return step / warmup_steps
    return max(0.0, (horizon - step + 1) / (horizon - warmup_steps + 1))


def warmup_steps(warmup: float, horizon: int) -> int:
    """Warm-up length for a share of the horizon (at least one step unless the share is 0)."""
    return max(1, round(warmup * horizon)) if warmup > 0 else 0


def update(net: Any, optimizer: Any, scaler: Any, loss: Any, lr: float, clip: float) -> None:
    """One AdamW update at learning rate `lr` from `loss`, gradients clipped to `clip`."""
    import torch

    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:  # fp16: scale the loss, unscale before clipping
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def step_seconds(net: Any, loss_of: Callable[[], Any], device: Any) -> float:
    """Seconds per training step, measured on one batch without changing weights or RNGs."""
    import torch

    devices = [device] if device.type == "cuda" else []
    times = []
    with torch.random.fork_rng(devices=devices):
        for _ in range(3):
            started = time.perf_counter()
            loss_of().backward()
            net.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    # The first pass pays one-off allocation; the optimizer step adds roughly a tenth.
    return 1.1 * float(np.median(times[1:]))


def progress_note(bar: Any, say: Callable[[str], None]) -> Callable[[str], None]:
    """Report a line during training: above the progress bar when it shows (on stderr, so
    stdout stays the command's JSON answer), else through `say`."""

    def note(line: str) -> None:
        if bar.disable:
            say(line)
        else:
            bar.write(line, file=sys.stderr)

    return note


def horizon_for(budget_left: float, per_step: float) -> int:
    """Steps that fit in what is left of a time budget."""
    return max(1, int(HORIZON_MARGIN * budget_left / per_step))


# --- resume state ---------------------------------------------------------------------------


def save_state(
    state: Path, net: Any, optimizer: Any, scaler: Any, record: dict[str, Any], version: int
) -> None:
    """Write weights, optimizer, RNGs and `record` to `state` (swapped in whole)."""
    import torch
    from safetensors.torch import save_file, save_model

    tmp, old = state.with_name(f".{state.name}.tmp"), state.with_name(f".{state.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(net, str(tmp / "model.safetensors"))
    opt = optimizer.state_dict()
    save_file(
        {
            f"{i}/{k}": v.detach().cpu().contiguous()
            for i, s in opt["state"].items()
            for k, v in s.items()
        },
        str(tmp / "optimizer.safetensors"),
    )
    rng = {"torch": torch.get_rng_state()}
    if next(net.parameters()).is_cuda:
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / "rng.safetensors"))
    full = {
        "version": version,
        **record,
        "param_groups": opt["param_groups"],
        "scaler": scaler.state_dict() if scaler is not None else None,
    }
    (tmp / "state.json").write_text(json.dumps(full, indent=1))
    shutil.rmtree(old, ignore_errors=True)
    if state.exists():
        state.rename(old)
    tmp.rename(state)
    shutil.rmtree(old, ignore_errors=True)


def read_state(state: Path, version: int) -> dict[str, Any]:
    """The record of a saved state, checked for its format version."""
    path = state / "state.json"
    if not path.is_file():
        raise FileNotFoundError(f"{state.parent}: no saved state to resume from ({path} missing)")
    record: dict[str, Any] = json.loads(path.read_text())
    if record.get("version") != version:
        raise ValueError(f"{path}: state version {record.get('version')}, need {version}")
    return record


def restore_state(
    state: Path, record: dict[str, Any], net: Any, optimizer: Any, scaler: Any, device: Any
) -> None:
    """Load weights, optimizer, torch RNGs and scaler saved by `save_state` into live objects."""
    import torch
    from safetensors.torch import load_file, load_model

    load_model(net, str(state / "model.safetensors"), strict=True, device=str(device))
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in load_file(str(state / "optimizer.safetensors")).items():
        index, name = key.split("/")
        per_param.setdefault(int(index), {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} for g in record["param_groups"]]
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    rng = load_file(str(state / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"])
    if scaler is not None and record.get("scaler"):
        scaler.load_state_dict(record["scaler"])


def check_same_config(recorded: dict[str, Any], now: Any) -> None:
    """Refuse to resume with settings (a dataclass) that would change the run's result."""
    changed = {k: (recorded.get(k), v) for k, v in asdict(now).items() if recorded.get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"--resume with different settings would not resume the run: {detail}")


def prepare_out(out: Path, resume: bool, force: bool, state_dir: str) -> None:
    """A fresh run needs an empty `out` (or --force); a resumed one needs its state."""
    if resume:
        return
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(
                f"{out} is not empty: pass --resume to continue its run or --force to start over"
            )
        shutil.rmtree(out / state_dir, ignore_errors=True)
