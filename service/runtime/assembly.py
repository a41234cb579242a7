"""The parts of an engine, put together from a bundle and plain options: the ONNX encoder and
cross-encoder sessions (checked against the manifest), and each one's dynamic batcher.

`Engine.from_bundle` calls these; nothing here knows the engine, the settings or the
metrics module (observers are passed in), so the server, the CLI, the benchmarks and the
tests all build the same engine from the same options (infinity's engine-args idea).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from service.errors import BundleError
from service.runtime.batching import BatchObserver, DynamicBatcher, InferFn
from service.runtime.bundle import Bundle
from service.runtime.cross import CrossCore, CrossObserver, CrossScorer, OnnxCrossEncoder
from service.runtime.encoder import OnnxEncoder
from service.runtime.head import Calibration


@dataclass(frozen=True)
class EngineOptions:
    """Everything an engine is built with besides its bundle (the settings' defaults)."""

    threads: int = 0
    """ONNX Runtime intra-op threads per session; 0 = all cores."""
    onnx_cpu_arena: bool = True
    onnx_spin: bool = False
    workers: int = 1
    """Batcher threads running the encoder side by side."""
    max_batch_tokens: int = 8192
    max_batch_size: int = 64
    max_queue_texts: int = 4096
    max_queue_seconds: float = math.inf
    batch_wait_s: float = 0.0
    retry_after: int = 1
    shutdown_timeout_s: float = 10.0
    max_texts: int = 256
    max_pairs: int = 128
    max_chars: int = 20_000
    similar_threshold: float | None = None
    """The pair head's (and cross-encoder's) decision threshold; None: the bundle's."""
    cross: bool = True
    """Load the bundle's cross-encoder and reranker when it has them."""
    cross_max_batch_tokens: int = 8192
    cross_max_batch_size: int = 32
    cross_max_queue_pairs: int = 1024


class CrossBatchObserver(CrossObserver, BatchObserver, Protocol):
    """What watches a cross-encoder: its requests and its batcher."""


def make_batcher(
    options: EngineOptions,
    infer: InferFn,
    max_tokens: int,
    max_size: int,
    max_queue: int,
    observer: BatchObserver | None = None,
) -> DynamicBatcher:
    """A dynamic batcher with the options' wait, Retry-After, workers and shutdown time."""
    return DynamicBatcher(
        infer,
        max_batch_tokens=max_tokens,
        max_batch_size=max_size,
        max_queue=max_queue,
        max_queue_seconds=options.max_queue_seconds,
        max_wait_s=options.batch_wait_s,
        retry_after=options.retry_after,
        observer=observer,
        workers=options.workers,
        shutdown_timeout_s=options.shutdown_timeout_s,
    )


def encoder_from_bundle(bundle: Bundle, options: EngineOptions) -> OnnxEncoder:
    """The bundle's ONNX encoder session; raises BundleError when it is not what the
    manifest says."""
    manifest = bundle.manifest
    core = OnnxEncoder(
        bundle.model_path,
        bundle.tokenizer_path,
        max_length=manifest.max_length,
        pad_id=manifest.pad_id,
        threads=options.threads,
        cpu_arena=options.onnx_cpu_arena,
        spin=options.onnx_spin,
    )
    if core.dims != manifest.dims.hidden or set(core.outputs) != set(manifest.outputs):
        raise BundleError(
            f"model.onnx yields {core.dims}-dim {list(core.outputs)}, manifest says "
            f"{manifest.dims.hidden}-dim {manifest.outputs}"
        )
    return core


def cross_encoder_from_bundle(
    bundle: Bundle, options: EngineOptions, part: str = "cross"
) -> OnnxCrossEncoder | None:
    """The bundle's ONNX cross-encoder session (`part` "cross") or relevance reranker
    session ("reranker"), or None when it has none."""
    info = bundle.manifest.cross if part == "cross" else bundle.manifest.reranker
    if info is None:
        return None
    paths = (
        (bundle.cross_model_path, bundle.cross_tokenizer_path)
        if part == "cross"
        else (bundle.reranker_model_path, bundle.reranker_tokenizer_path)
    )
    core = OnnxCrossEncoder(
        *paths,
        max_length=info.max_length,
        pad_id=info.pad_id,
        threads=options.threads,
        cpu_arena=options.onnx_cpu_arena,
        spin=options.onnx_spin,
        segment_ids=info.segment_ids,
    )
    if core.num_labels != info.num_labels:
        raise BundleError(
            f"{paths[0].name} yields {core.num_labels} logits, manifest says {info.num_labels}"
        )
    return core


def assemble_cross(
    core: CrossCore,
    options: EngineOptions,
    *,
    model_name: str,
    calibration: Calibration | None = None,
    labels: list[str] | None = None,
    symmetric: bool = False,
    observer: CrossBatchObserver | None = None,
) -> CrossScorer:
    """A cross-encoder core behind its own batcher (a second queue), as a scorer."""
    batcher = make_batcher(
        options,
        core.infer,
        max(options.cross_max_batch_tokens, core.max_length),
        options.cross_max_batch_size,
        options.cross_max_queue_pairs,
        observer,
    )
    threshold = 0.5 if options.similar_threshold is None else options.similar_threshold
    return CrossScorer(
        core,
        batcher,
        model_name=model_name,
        calibration=calibration,
        labels=labels or [],
        threshold=threshold,
        observer=observer,
        symmetric=symmetric,
    )


def cross_from_bundle(
    bundle: Bundle, options: EngineOptions, observer: CrossBatchObserver | None = None
) -> CrossScorer | None:
    """The bundle's cross-encoder behind its batcher; None when it has none or
    `options.cross` is off."""
    info = bundle.manifest.cross
    core = cross_encoder_from_bundle(bundle, options) if options.cross else None
    if info is None or core is None:
        return None
    return assemble_cross(
        core,
        options,
        model_name=info.source.model,
        calibration=bundle.cross_calibration,
        labels=info.labels,
        symmetric=info.symmetric,
        observer=observer,
    )


def reranker_from_bundle(
    bundle: Bundle, options: EngineOptions, observer: CrossBatchObserver | None = None
) -> CrossScorer | None:
    """The bundle's relevance reranker behind its own batcher (the model's own sigmoid, pairs
    read as given); None when it has none or `options.cross` is off."""
    info = bundle.manifest.reranker
    core = cross_encoder_from_bundle(bundle, options, "reranker") if options.cross else None
    if info is None or core is None:
        return None
    return assemble_cross(
        core, options, model_name=info.source.model, labels=info.labels, observer=observer
    )
