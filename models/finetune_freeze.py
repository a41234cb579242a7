"""`simsvc finetune --objective cross --freeze`: the seed's cheap cross-encoder baseline.

The encoder stays frozen. Each pair is read jointly (`[CLS] a [SEP] b [SEP]`, segments
0/1), in both orders, and BERT's pooled [CLS] vector (the tanh pooler over [CLS], which
`BertForSequenceClassification` feeds to its classifier) is the feature vector. A logistic
regression (soft labels for graded scores) or a Platt-calibrated linear SVM is fitted on it
with scikit-learn (`models.train_head.fit_linear_path`: C by 4-fold Spearman with both
orders of a pair in one fold), and its weights are written into the classifier layer. The
output is therefore the same servable `AutoModelForSequenceClassification` checkpoint as a
fine-tuned cross-encoder: sigmoid(logit) is the fitted probability.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.finetune_config import CARD_FILE, FinetuneOptions
from models.finetune_data import both_orders, read_pair_data
from models.finetune_eval import DevSets
from models.finetune_models import load_cross, map_pairs, mark_cross
from models.train_head import fit_calibration, fit_linear_path
from models.training import prepare_out, resolve_device, resolve_precision
from models.training_run import STATE_DIR, start_torch, write_card

FREEZE_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def pooled_features(
    net: Any,
    tokenizer: Any,
    a: list[str],
    b: list[str],
    max_length: int,
    device: Any,
    precision: str,
) -> np.ndarray:
    """The pooled [CLS] vector of each joint pair, from the frozen encoder in eval mode."""
    base = getattr(net, net.base_model_prefix)
    return map_pairs(
        net,
        tokenizer,
        a,
        b,
        max_length,
        device,
        precision,
        lambda batch: base(**batch).pooler_output,
        width=int(net.config.hidden_size),
    )


def _require_pooled_classifier(net: Any, model: str) -> None:
    import torch

    base = getattr(net, net.base_model_prefix, None)
    classifier = getattr(net, "classifier", None)
    if (
        getattr(base, "pooler", None) is None
        or not isinstance(classifier, torch.nn.Linear)
        or classifier.in_features != net.config.hidden_size
    ):
        raise ValueError(
            f"{model}: --freeze needs a BERT-family model whose classifier is one linear "
            "layer on the pooled [CLS] vector (BertForSequenceClassification)"
        )


def fit_frozen(opts: FinetuneOptions, say: Callable[[str], None]) -> dict[str, Any]:
    """Fit the classifier layer on frozen pooled [CLS] features; write the checkpoint."""
    start_torch(opts.threads)
    import torch

    from models.checkpoint_files import training_tokenizer

    if opts.objective != "cross":
        raise ValueError("--freeze is the cross-encoder baseline: use it with --objective cross")
    if opts.head not in ("lr", "svm"):
        raise ValueError(f"--head must be lr or svm, got {opts.head!r}")
    prepare_out(opts.out, False, opts.force, STATE_DIR)
    started = time.monotonic()
    device = resolve_device(opts.device)
    precision = resolve_precision(opts.precision, device)
    train = read_pair_data(list(opts.pairs), "train")
    if train.kind == "positive":
        raise ValueError("--freeze fits labelled pairs (graded or 0/1)")
    tokenizer = training_tokenizer(opts.model)
    net = load_cross(opts.model, opts.seed).to(device)
    _require_pooled_classifier(net, opts.model)
    doubled = both_orders(train)
    say(f"features: pooled [CLS] of {len(doubled)} joint pairs (both orders)")
    feats = pooled_features(
        net, tokenizer, doubled.a, doubled.b, opts.max_length, device, precision
    )
    mean = feats.mean(axis=0)
    scale = feats.std(axis=0)
    scale[scale < 1e-12] = 1.0
    binary = train.kind == "binary"
    groups = np.concatenate([np.arange(len(train)), np.arange(len(train))])
    fit = fit_linear_path(
        (feats - mean) / scale, doubled.target, opts.head, binary, FREEZE_GRID, 4, opts.seed, groups
    )
    weights = fit.coef / scale
    bias = float(fit.intercept - (fit.coef * mean / scale).sum())
    calibration = "logistic"
    if opts.head == "svm":  # Platt's sigmoid(a f + b) is linear in f: fold it into the layer
        platt = fit_calibration("sigmoid", fit.oof, doubled.target, binary)
        assert platt.a is not None and platt.b is not None
        weights, bias = weights * platt.a, bias * platt.a + platt.b
        calibration = f"sigmoid (Platt): a={platt.a:.4g}, b={platt.b:.4g}"
    with torch.no_grad():
        net.classifier.weight.copy_(torch.as_tensor(weights, dtype=torch.float32)[None, :])
        net.classifier.bias.fill_(bias)
    say(f"{opts.head}: C={fit.facts['c']}, cross-validated Spearman {fit.facts['cv_spearman']}")

    dev = DevSets([str(p) for p in opts.dev], "cross")
    curve = dev.figures(net, tokenizer, "cross", "cls", opts.max_length, device, "fp32")
    for name, figures in curve.items():
        say(f"dev {name}: {figures}")
    opts.out.mkdir(parents=True, exist_ok=True)
    mark_cross(net)
    net.save_pretrained(str(opts.out))
    tokenizer.save_pretrained(str(opts.out))
    first = next(iter(curve.values()), None)
    card = {
        "kind": "cross-encoder",
        "base_model": Path(opts.model).name if Path(opts.model).exists() else opts.model,
        "objective": "cross --freeze",
        "output": "AutoModelForSequenceClassification, one logit (sigmoid = probability)",
        "features": (
            "BERT's pooled [CLS] vector (tanh pooler, frozen) of the joint pair "
            "[CLS] a [SEP] b [SEP], both orders in training; standardisation folded into "
            "the classifier weights"
        ),
        "head": opts.head,
        "calibration": calibration,
        "fit": fit.facts,
        "data": {
            "train": train.sources,
            "kind": train.kind,
            "dev": [Path(p).name for p in opts.dev],
        },
        "train_items": len(doubled),
        "hyperparameters": {"max_length": opts.max_length, "seed": opts.seed, "grid": FREEZE_GRID},
        "device": device.type,
        "precision": precision,
        "seconds": round(time.monotonic() - started, 1),
        "dev_curve": [{"step": 0, "figure": first["spearman"], "sets": curve}] if first else [],
        "dev_best": first["spearman"] if first else None,
        "stopped": "done",
    }
    write_card(opts.out, CARD_FILE, card)
    return json.loads((opts.out / CARD_FILE).read_text())  # type: ignore[no-any-return]
