"""One training run's harness, shared by `simsvc pretrain` and `simsvc finetune`.

A command subclasses `TrainingRun` and supplies its network, its batch loss, its
evaluation and what it saves; the harness owns the rest, so the two commands cannot drift
apart in it: the resume record (read, checked against the settings, restored whole), the
horizon (a fixed step count, or as many steps as fit the time budget, evaluations
included), the loop (stop-after and time-budget checks, the learning-rate schedule, one
clipped AdamW update per step, the progress bar, the loss log, evaluation and checkpoint
saving on their schedules) and the card written beside the checkpoint.

The run's position (`RunState`, extended by each command) goes into every saved state, so
a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from models.export_onnx import require_build_extra
from models.training import (
    adamw,
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

STATE_DIR = "state"
"""The resume state's folder inside a run's output folder."""


class RunOptions(Protocol):
    """The options every training command takes for its run (its own come beside them)."""

    out: Path
    time_budget: float | None
    resume: bool
    force: bool
    device: str
    precision: str
    stop_after: int | None
    log_every: int
    save_every: int
    threads: int
    progress: bool


@dataclass
class RunState:
    """The position of a run that the harness keeps; a command's own state extends it."""

    horizon: int = 1
    step: int = 0
    seconds: float = 0.0
    """Training time: evaluation and saving are not in it."""
    eval_seconds: float = 0.0
    log: list[dict[str, float]] = field(default_factory=list)
    recent: list[dict[str, float]] = field(default_factory=list)
    """Per-step figures since the last log line (so a resumed run logs the same averages)."""
    stopped: str = ""


S = TypeVar("S", bound=RunState)


def start_torch(threads: int) -> None:
    """Ready torch for a run: the build extra present, no hub noise, the thread count set."""
    require_build_extra()
    import torch

    quiet_transformers()
    if threads > 0:
        torch.set_num_threads(threads)


def write_card(out: Path, name: str, card: dict[str, Any]) -> None:
    """A run's card (what was trained on what, how, how long, how it scored) as `out/name`,
    with the torch and transformers versions that produced it."""
    import torch
    import transformers

    card = {
        **card,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (out / name).write_text(json.dumps(card, indent=1, ensure_ascii=False))


class TrainingRun(ABC, Generic[S]):
    """Setup, resume, horizon, loop and checkpoints of one run; the hooks below are the
    command's part. Use: `__init__`, resolve the config (a resumed run's record is in
    `self.record`), `open(cfg)`, build the network, `attach(net, ...)`, then `resume` or a
    fresh `RunState` (with `evaluate` before training and `plan` for its horizon), `train`."""

    run: S
    net: Any
    optimizer: Any
    scaler: Any
    device: Any
    precision: str

    def __init__(self, opts: RunOptions, version: int, say: Callable[[str], None]) -> None:
        start_torch(opts.threads)
        self.started = time.monotonic()
        self.opts, self.version, self.say = opts, version, say
        self.out = opts.out
        self.record = read_state(self.out / STATE_DIR, version) if opts.resume else None
        self.note = say

    # --- the command's part ------------------------------------------------------------

    @abstractmethod
    def batch_loss(self) -> tuple[Any, dict[str, float]]:
        """The next batch's loss to minimise (advancing the data position) and the
        figures to log for it."""

    @abstractmethod
    def probe_loss(self) -> Any:
        """A loss on one representative batch, without moving the data position (to time
        a step)."""

    @abstractmethod
    def save(self) -> None:
        """Write the checkpoint, the state (`save_state`) and the card."""

    def stepped(self) -> bool:
        """Bookkeeping once a step's time is counted; True when an evaluation is due."""
        return False

    def measure(self) -> str:
        """Evaluate, record the figures in the run state, and say them in one line."""
        return ""

    def early_stop(self) -> str:
        """After an evaluation: why to stop now, or nothing."""
        return ""

    def final_eval(self) -> bool:
        """Whether the end of the run still needs an evaluation."""
        return False

    def progress(self) -> dict[str, str]:
        """Extra fields for the progress bar."""
        return {}

    # --- the harness --------------------------------------------------------------------

    def open(self, cfg: Any) -> None:
        """Refuse a resume with changed settings, ready the output folder, and pick the
        device and precision."""
        if self.record:
            check_same_config(self.record["config"], cfg)
        prepare_out(self.out, self.opts.resume, self.opts.force, STATE_DIR)
        self.device = resolve_device(self.opts.device)
        self.precision = resolve_precision(self.opts.precision, self.device)

    def attach(self, net: Any, lr: float, weight_decay: float) -> None:
        """Train `net` on the run's device, with AdamW and (fp16) a loss scaler."""
        net.to(self.device)
        net.train()
        self.net = net
        self.optimizer = adamw(net, lr, weight_decay)
        self.scaler = grad_scaler(self.precision)

    def resume(self, kind: type[S]) -> S | None:
        """The saved run state, with weights, optimizer, RNGs and scaler restored; None for
        a fresh run."""
        if self.record is None:
            return None
        run = kind(**self.record["run"])
        run.stopped = ""
        restore_state(
            self.out / STATE_DIR, self.record, self.net, self.optimizer, self.scaler, self.device
        )
        self.say(f"resuming at step {run.step} of {run.horizon}")
        return run

    def plan(self, steps: int | None, evals_per_step: float) -> int:
        """The horizon: `steps`, else the steps that fit what is left of the time budget,
        counting `evals_per_step` evaluations at the measured cost of one (so far)."""
        if steps is not None:
            return steps
        budget = self.opts.time_budget
        assert budget is not None
        per_step = step_seconds(self.net, self.probe_loss, self.device)
        evals = self.run.eval_seconds * evals_per_step
        horizon = horizon_for(budget - (time.monotonic() - self.started), per_step + evals)
        self.say(f"time budget {budget:.0f} s at ~{per_step:.3f} s/step: {horizon} steps")
        return horizon

    def evaluate(self) -> str:
        """`measure`, its time counted as evaluation time."""
        clock = time.monotonic()
        line = self.measure()
        self.run.eval_seconds += time.monotonic() - clock
        return line

    def save_state(self, cfg: Any, extra: dict[str, Any] | None = None) -> None:
        """The resume state: weights, optimizer, RNGs, scaler, `cfg`, the run state and
        the command's `extra` record."""
        record = {"config": asdict(cfg), "run": asdict(self.run), **(extra or {})}
        save_state(
            self.out / STATE_DIR, self.net, self.optimizer, self.scaler, record, self.version
        )

    def train(self, lr: float, warmup: float, clip: float) -> None:
        """Train from the run's step to its horizon (or a stop), then save."""
        from tqdm import tqdm

        run, opts = self.run, self.opts
        warm = warmup_steps(warmup, run.horizon)
        bar = tqdm(
            total=run.horizon,
            initial=run.step,
            unit="step",
            disable=not opts.progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self.note = progress_note(bar, self.say)
        clock = time.monotonic()
        while run.step < run.horizon:
            if opts.stop_after is not None and run.step >= opts.stop_after:
                run.stopped = f"stop-after {opts.stop_after}"
                break
            if opts.time_budget is not None and time.monotonic() - self.started >= opts.time_budget:
                run.stopped = "time budget"
                break
            rate = lr * lr_factor(run.step + 1, run.horizon, warm)
            loss, figures = self.batch_loss()
            update(self.net, self.optimizer, self.scaler, loss, rate, clip)
            run.recent.append(figures)
            run.step += 1
            now = time.monotonic()
            run.seconds += now - clock
            avg = {k: float(np.mean([f[k] for f in run.recent])) for k in figures}
            bar.update(1)
            bar.set_postfix(
                {k: f"{v:.4f}" for k, v in avg.items()} | self.progress() | {"lr": f"{rate:.1e}"},
                refresh=False,
            )
            if opts.log_every > 0 and run.step % opts.log_every == 0:
                run.log.append({"step": run.step, "t": round(run.seconds, 1), "lr": rate, **avg})
                run.recent = []
            save_due = opts.save_every > 0 and run.step % opts.save_every == 0
            if self.stepped():
                self.note(self.evaluate())
                if reason := self.early_stop():
                    run.stopped = reason
                    break
                save_due = True  # the card shows every evaluation
            if save_due and run.step < run.horizon:  # the last step saves below
                self.save()
            clock = time.monotonic()
        bar.close()
        self.note = self.say
        if self.final_eval():
            self.say(self.evaluate())
        run.stopped = run.stopped or "done"
        self.save()
