"""The cross-encoder part of `simsvc build --cross-model`: export, parity, int8, calibration.

Writes `cross.onnx`, `cross_tokenizer.json` and `cross_calibration.json` into the bundle's
work directory and returns the manifest section. The build fails when the served fp32 graph's
logits differ from PyTorch's by more than `parity_max_diff` on padded mixed-length pairs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.datasets import read_pairs
from models.export_cross import (
    check_cross_parity,
    export_cross,
    load_cross_checkpoint,
    parity_pairs,
)
from models.optimize import QUANTIZATIONS, fuse_graph, quantization_method, quantize_int8
from service.runtime.bundle import (
    CROSS_CALIBRATION_FILE,
    CROSS_MODEL_FILE,
    CROSS_TOKENIZER_FILE,
    CrossCalibrationInfo,
    CrossInfo,
    CrossParity,
    CrossQuantization,
    SourceInfo,
)
from service.runtime.cross import OnnxCrossEncoder, cross_logits, pair_raw_scores
from service.runtime.head import Calibration
from service.runtime.stats import spearman


@dataclass
class CrossOptions:
    """What `simsvc build` takes for the cross-encoder part."""

    model: str
    calibrate_on: Path | None = None
    calibration: str = "sigmoid"
    max_length: int | None = None
    opset: int = 17
    optimize: bool = True
    quantize: str | None = None
    threads: int = 0
    parity_max_diff: float = 1e-4
    symmetric: bool = True
    """/v1/similarity averages both orders of a pair (calibrated so)."""


@dataclass
class CrossBuild:
    """The manifest section, the served core, and the fp32 core (the same when not int8)."""

    info: CrossInfo
    core: OnnxCrossEncoder
    fp32_core: OnnxCrossEncoder


def build_cross(
    opts: CrossOptions,
    work: Path,
    say: Callable[[str], None],
    extra_pairs: list[tuple[str, str]] | None = None,
) -> CrossBuild:
    """Build the cross-encoder part into `work` (the bundle being assembled)."""
    if opts.calibration not in ("sigmoid", "isotonic"):
        raise ValueError(f"cross calibration must be sigmoid or isotonic, got {opts.calibration!r}")
    say(f"cross-encoder: loading {opts.model}")
    ckpt = load_cross_checkpoint(opts.model)
    max_length = opts.max_length or ckpt.default_max_length
    if not 8 <= max_length <= ckpt.max_positions:
        raise ValueError(f"cross max length must be in 8..{ckpt.max_positions}, got {max_length}")
    pad_id = ckpt.pad_id

    def core_for(path: Path) -> OnnxCrossEncoder:
        return OnnxCrossEncoder(
            path,
            work / CROSS_TOKENIZER_FILE,
            max_length,
            pad_id=pad_id,
            threads=opts.threads,
            segment_ids=ckpt.segment_ids,
        )

    calibration_pairs = read_pairs(opts.calibrate_on) if opts.calibrate_on else None
    data = [(p.a, p.b) for p in calibration_pairs.pairs] if calibration_pairs else []
    checks = parity_pairs(data + list(extra_pairs or []))

    say(f"cross-encoder: exporting to ONNX (opset {opts.opset}), {ckpt.num_labels} label(s)")
    inputs = export_cross(ckpt, work, opts.opset)
    path = work / CROSS_MODEL_FILE
    fusions: dict[str, int] = {}
    parity: CrossParity | None = None
    if opts.optimize:
        plain = work / ".cross.export.onnx"
        os.replace(path, plain)
        try:
            fusions = fuse_graph(plain, path, ckpt.heads, ckpt.hidden)
            parity = check_cross_parity(ckpt, core_for(path), checks)
            if parity.max_abs_diff > opts.parity_max_diff:
                say(f"cross-encoder: fused graph off by {parity.max_abs_diff:.2e}; plain export")
                parity = None
        except Exception as exc:  # noqa: BLE001 - an unfusable graph still serves
            say(f"cross-encoder: fusion skipped ({type(exc).__name__}: {exc}); plain export")
            parity = None
        if parity is None:
            fusions = {}
            os.replace(plain, path)
        plain.unlink(missing_ok=True)
    if parity is None:
        parity = check_cross_parity(ckpt, core_for(path), checks)
    say(
        f"cross-encoder parity: max abs logit diff {parity.max_abs_diff:.2e} on {parity.pairs} "
        f"pairs in {parity.batches} padded batches, tokenizer match {parity.tokenizer_match}"
    )
    if parity.max_abs_diff > opts.parity_max_diff or not parity.tokenizer_match:
        raise RuntimeError(
            f"cross-encoder ONNX parity failed: max abs logit diff {parity.max_abs_diff:.2e} "
            f"(limit {opts.parity_max_diff:g}), tokenizer match {parity.tokenizer_match}"
        )

    core = fp32_core = core_for(path)
    quantization = None
    if opts.quantize in QUANTIZATIONS:
        fp32_path = work / ".cross.fp32.onnx"  # dot-files stay out of the bundle
        os.replace(path, fp32_path)
        quantize_int8(fp32_path, path, QUANTIZATIONS[opts.quantize])
        fp32_core, core = core_for(fp32_path), core_for(path)
        diff = np.abs(cross_logits(core, checks) - cross_logits(fp32_core, checks)).max()
        quantization = CrossQuantization(
            method=quantization_method(opts.quantize),
            max_abs_diff_vs_fp32=round(float(diff), 6),
        )
        say(f"cross-encoder int8: max abs logit diff vs fp32 {diff:.4f}")
    elif opts.quantize is not None:
        raise ValueError(f"unknown quantization {opts.quantize!r}: {list(QUANTIZATIONS)}")

    if calibration_pairs is not None and opts.calibrate_on is not None:
        from models.train_head import fit_calibration

        raw = pair_raw_scores(core, data, opts.symmetric)
        targets = np.clip(calibration_pairs.targets(), 0.0, 1.0)
        calibration = fit_calibration(opts.calibration, raw, targets, calibration_pairs.binary)
        calib_info = CrossCalibrationInfo(
            kind=calibration.kind,
            data=opts.calibrate_on.name,
            pairs=len(data),
            targets="binary labels"
            if calibration_pairs.binary
            else f"soft labels (score - {calibration_pairs.low:g}) / "
            f"{calibration_pairs.high - calibration_pairs.low:g}",
            spearman=round(100 * spearman(raw, calibration_pairs.scores()), 2),
        )
        order = "both orders averaged" if opts.symmetric else "as given"
        say(f"cross-encoder calibration: {calibration.kind} on {len(data)} pairs ({order})")
    else:
        calibration = Calibration("logistic")
        calib_info = CrossCalibrationInfo(kind="logistic")
    (work / CROSS_CALIBRATION_FILE).write_text(json.dumps(calibration.to_dict(), indent=1))

    info = CrossInfo(
        source=SourceInfo(
            model=opts.model if not Path(opts.model).exists() else Path(opts.model).name,
            model_type=ckpt.model_type,
            architectures=ckpt.architectures,
            pooler="trained",
        ),
        num_labels=ckpt.num_labels,
        labels=ckpt.labels,
        score="logit" if ckpt.num_labels == 1 else "logit_difference",
        max_length=max_length,
        pad_id=pad_id,
        inputs=inputs,
        segment_ids=ckpt.segment_ids,
        opset=opts.opset,
        fusions=fusions,
        parity=parity,
        quantization=quantization,
        calibration=calib_info,
        symmetric=opts.symmetric,
        card=ckpt.card,
    )
    return CrossBuild(info=info, core=core, fp32_core=fp32_core)
