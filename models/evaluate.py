"""Evaluate a bundle on labelled pairs: Spearman x100 of raw cosine, whitened cosine, the
head's probability and, when the bundle has one, the cross-encoder's score and calibrated
probability, plus anisotropy before and after whitening. Needs only the runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.datasets import PairSet, read_pairs
from service.runtime.assembly import EngineOptions, cross_encoder_from_bundle, encoder_from_bundle
from service.runtime.bundle import Bundle, load_bundle, read_manifest, write_manifest
from service.runtime.cross import CrossCore, OnnxCrossEncoder, pair_raw_scores, sigmoid
from service.runtime.encoder import EncoderCore, encode_texts
from service.runtime.head import Calibration, make_views
from service.runtime.prompts import PromptedEncoder
from service.runtime.stats import anisotropy, l2_normalize, spearman
from service.runtime.types import FloatArray
from service.runtime.whitening import Whitening


def bundle_encoder(bundle: Bundle, threads: int = 0) -> EncoderCore:
    """The bundle's ONNX encoder, reading text as pairs are served (with the query prompt)."""
    core = encoder_from_bundle(bundle, EngineOptions(threads=threads, onnx_spin=True))
    return PromptedEncoder(core, bundle.prompts.text(None, "query"))


def bundle_cross_encoder(bundle: Bundle, threads: int = 0) -> OnnxCrossEncoder | None:
    """The bundle's ONNX cross-encoder, or None when it has none."""
    return cross_encoder_from_bundle(bundle, EngineOptions(threads=threads, onnx_spin=True))


def encode_pair_set(
    encoder: EncoderCore, pooling: str, pairs: PairSet
) -> tuple[FloatArray, np.ndarray, np.ndarray]:
    """Raw pooled vectors of a pair set's unique sentences and each pair's two row indices."""
    sentences = pairs.sentences()
    where = {s: i for i, s in enumerate(sentences)}
    raw = encode_texts(encoder, sentences)[pooling]
    ia = np.array([where[p.a] for p in pairs.pairs])
    ib = np.array([where[p.b] for p in pairs.pairs])
    return raw, ia, ib


def cosine_spearman(
    raw: FloatArray, whitening: Whitening, ia: np.ndarray, ib: np.ndarray, gold: np.ndarray
) -> dict[str, float]:
    """Spearman x100 of the raw and the whitened cosine of each pair against gold."""
    white, unit = whitening.apply(raw), l2_normalize(raw)
    return {
        "raw_cosine": round(100 * spearman(np.einsum("ij,ij->i", unit[ia], unit[ib]), gold), 2),
        "whitened_cosine": round(
            100 * spearman(np.einsum("ij,ij->i", white[ia], white[ib]), gold), 2
        ),
    }


def cross_spearman(
    core: CrossCore, calibration: Calibration, pairs: PairSet, both_orders: bool = False
) -> dict[str, float]:
    """Spearman x100 of the cross-encoder's score (its sigmoid) and calibrated probability,
    each pair read the way /v1/similarity reads it."""
    raw = pair_raw_scores(core, [(p.a, p.b) for p in pairs.pairs], both_orders)
    gold = pairs.scores()
    return {
        "cross_score": round(100 * spearman(sigmoid(raw), gold), 2),
        "cross_probability": round(100 * spearman(calibration(raw), gold), 2),
    }


def evaluate_pairs(
    bundle: Bundle,
    pairs: PairSet,
    encoder: EncoderCore | None = None,
    threads: int = 0,
    cross: CrossCore | None = None,
) -> dict[str, Any]:
    """Figures for one pair set (Spearman x100, rounded to 2 places)."""
    encoder = encoder or bundle_encoder(bundle, threads)
    raw, ia, ib = encode_pair_set(encoder, bundle.manifest.pooling, pairs)
    white = bundle.whitening.apply(raw)
    gold = pairs.scores()
    figures: dict[str, Any] = {
        "data": Path(pairs.path).name,
        "pairs": len(pairs.pairs),
        "spearman": cosine_spearman(raw, bundle.whitening, ia, ib, gold),
        "anisotropy": {
            "raw": {k: round(v, 4) for k, v in anisotropy(raw).items()},
            "whitened": {k: round(v, 4) for k, v in anisotropy(white).items()},
        },
    }
    if bundle.head is not None:
        prob = bundle.head.probability(make_views(raw, bundle.whitening, ia, ib, white=white))
        figures["spearman"]["head_probability"] = round(100 * spearman(prob, gold), 2)
        if pairs.binary:
            figures["head_accuracy"] = round(
                float(((prob >= bundle.head.threshold) == (gold >= 0.5)).mean()), 4
            )
    cross = cross or bundle_cross_encoder(bundle, threads)
    if cross is not None and bundle.cross_calibration is not None:
        symmetric = bundle.manifest.cross is not None and bundle.manifest.cross.symmetric
        figures["spearman"].update(
            cross_spearman(cross, bundle.cross_calibration, pairs, both_orders=symmetric)
        )
    return figures


def evaluate_bundle(
    directory: Path, files: list[Path], threads: int = 0, record: bool = False
) -> dict[str, dict[str, Any]]:
    """Evaluate on each file; with `record`, store the figures in the manifest."""
    bundle = load_bundle(directory)
    encoder = bundle_encoder(bundle, threads)
    cross = bundle_cross_encoder(bundle, threads)
    results = {
        Path(f).name: evaluate_pairs(bundle, read_pairs(Path(f)), encoder, cross=cross)
        for f in files
    }
    if record:
        manifest = read_manifest(directory)
        manifest.evaluation.update(results)
        write_manifest(directory, manifest)
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of evaluation figures."""

    def opt(value: float | None, width: int) -> str:
        return f"{'-' if value is None else f'{value:.2f}':>{width}}"

    lines = [
        f"{'data':<22}{'pairs':>7}{'raw cos':>10}{'white cos':>11}{'head p':>9}{'cross':>8}"
        f"{'cross p':>9}{'aniso raw':>11}{'aniso white':>13}{'top10 raw':>11}{'top10 white':>13}"
    ]
    for name, r in results.items():
        s = r["spearman"]
        a = r["anisotropy"]
        lines.append(
            f"{name:<22}{r['pairs']:>7}{s['raw_cosine']:>10.2f}{s['whitened_cosine']:>11.2f}"
            f"{opt(s.get('head_probability'), 9)}{opt(s.get('cross_score'), 8)}"
            f"{opt(s.get('cross_probability'), 9)}"
            f"{a['raw']['mean_cosine']:>11.3f}{a['whitened']['mean_cosine']:>13.3f}"
            f"{a['raw']['top10_variance_share']:>11.3f}{a['whitened']['top10_variance_share']:>13.3f}"
        )
    return "\n".join(lines)
