"""Evaluate a bundle on labelled pairs: Spearman x100 of raw cosine, whitened cosine and the
head's probability, plus anisotropy before and after whitening. Needs only the runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.datasets import PairSet, read_pairs
from service.runtime.bundle import Bundle, load_bundle, read_manifest, write_manifest
from service.runtime.encoder import EncoderCore, OnnxEncoder, encode_texts
from service.runtime.head import make_views
from service.runtime.stats import anisotropy, l2_normalize, spearman


def bundle_encoder(bundle: Bundle, threads: int = 0) -> OnnxEncoder:
    """The bundle's ONNX encoder."""
    m = bundle.manifest
    return OnnxEncoder(bundle.model_path, bundle.tokenizer_path, m.max_length, m.pad_id, threads)


def evaluate_pairs(
    bundle: Bundle, pairs: PairSet, encoder: EncoderCore | None = None, threads: int = 0
) -> dict[str, Any]:
    """Figures for one pair set (Spearman x100, rounded to 2 places)."""
    encoder = encoder or bundle_encoder(bundle, threads)
    sentences = pairs.sentences()
    where = {s: i for i, s in enumerate(sentences)}
    raw = encode_texts(encoder, sentences)[bundle.manifest.pooling]
    white = bundle.whitening.apply(raw)
    unit = l2_normalize(raw)
    ia = np.array([where[p.a] for p in pairs.pairs])
    ib = np.array([where[p.b] for p in pairs.pairs])
    gold = pairs.scores()
    figures: dict[str, Any] = {
        "data": Path(pairs.path).name,
        "pairs": len(pairs.pairs),
        "spearman": {
            "raw_cosine": round(100 * spearman(np.einsum("ij,ij->i", unit[ia], unit[ib]), gold), 2),
            "whitened_cosine": round(
                100 * spearman(np.einsum("ij,ij->i", white[ia], white[ib]), gold), 2
            ),
        },
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
    return figures


def evaluate_bundle(
    directory: Path, files: list[Path], threads: int = 0, record: bool = False
) -> dict[str, dict[str, Any]]:
    """Evaluate on each file; with `record`, store the figures in the manifest."""
    bundle = load_bundle(directory)
    encoder = bundle_encoder(bundle, threads)
    results = {Path(f).name: evaluate_pairs(bundle, read_pairs(Path(f)), encoder) for f in files}
    if record:
        manifest = read_manifest(directory)
        manifest.evaluation.update(results)
        write_manifest(directory, manifest)
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of evaluation figures."""
    lines = [
        f"{'data':<22}{'pairs':>7}{'raw cos':>10}{'white cos':>11}{'head p':>9}"
        f"{'aniso raw':>11}{'aniso white':>13}{'top10 raw':>11}{'top10 white':>13}"
    ]
    for name, r in results.items():
        s = r["spearman"]
        head = s.get("head_probability")
        a = r["anisotropy"]
        lines.append(
            f"{name:<22}{r['pairs']:>7}{s['raw_cosine']:>10.2f}{s['whitened_cosine']:>11.2f}"
            f"{'-' if head is None else f'{head:.2f}':>9}"
            f"{a['raw']['mean_cosine']:>11.3f}{a['whitened']['mean_cosine']:>13.3f}"
            f"{a['raw']['top10_variance_share']:>11.3f}{a['whitened']['top10_variance_share']:>13.3f}"
        )
    return "\n".join(lines)
