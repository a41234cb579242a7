"""The relevance reranker part of `simsvc build --reranker`: exported, checked and (with
`--quantize int8`) quantized exactly as the cross-encoder part is (`models/build_cross.py`),
under its own file names, `reranker.onnx` and `reranker_tokenizer.json`.

A reranker serves the model's own sigmoid (no calibration: it ranks, it does not decide) and
reads (query, document) in the order given. Its manifest section records the checkpoint's
card: the training data (with the mined negatives) and the dev nDCG@10 of reranking.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from models.build_cross import CrossOptions, build_cross
from service.runtime.bundle import (
    CROSS_MODEL_FILE,
    CROSS_TOKENIZER_FILE,
    RERANKER_MODEL_FILE,
    RERANKER_TOKENIZER_FILE,
    CrossInfo,
)

STAGE = ".reranker"
"""Where the part is built inside the bundle's work folder (dot-names stay out of it)."""


def build_reranker(opts: CrossOptions, work: Path, say: Callable[[str], None]) -> CrossInfo:
    """Build the reranker part into `work`; returns its manifest section."""
    if opts.calibrate_on is not None:
        raise ValueError("a reranker is not calibrated: it serves the model's own sigmoid")
    stage = work / STAGE
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        built = build_cross(
            CrossOptions(**{**vars(opts), "symmetric": False}),
            stage,
            lambda m: say(m.replace("cross-encoder", "reranker", 1)),
        )
        os.replace(stage / CROSS_MODEL_FILE, work / RERANKER_MODEL_FILE)
        os.replace(stage / CROSS_TOKENIZER_FILE, work / RERANKER_TOKENIZER_FILE)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return built.info
