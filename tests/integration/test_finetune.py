"""Fine-tuning end to end on the tiny BERT: each objective learns a toy task, runs resume
exactly, the outputs load as standard checkpoints, the CLI works, and a fine-tuned
bi-encoder becomes a bundle through ONNX."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import load_file

from models.finetune import finetune
from models.finetune_config import FinetuneOptions
from service.cli.main import main
from tests.builders import WORDS, sentences
from tests.unit.test_finetune_data import write_beir


def write_binary_file(path: Path, n: int, seed: int) -> Path:
    """`s1<TAB>s2<TAB>0/1`: b is a's words shuffled (1) or another sentence (0)."""
    rng = random.Random(seed)
    others = iter(sentences(n, seed + 1000))
    lines = []
    for a in sentences(n, seed):
        words = a.split()
        if rng.random() < 0.5:
            rng.shuffle(words)
            lines.append(f"{a}\t{' '.join(words)}\t1")
        else:
            lines.append(f"{a}\t{next(others)}\t0")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_synonym_file(path: Path, n: int, seed: int, binary: bool) -> Path:
    """Pairs whose similarity an untrained model cannot see: b keeps a share of a's words,
    each replaced by its fixed "synonym" (another word of the vocabulary), and fills the
    rest with random words. The gold score is that share (0-5, or 1 when at least half)."""
    rng = random.Random(seed)
    synonym = {WORDS[i]: WORDS[i + 1] for i in range(0, len(WORDS) - 1, 2)}
    rows = ["score\tsentence1\tsentence2"] if not binary else []
    for a in sentences(n, seed):
        words = [w for w in a.split() if w in synonym] or ["the"]
        share = rng.random()
        b = [synonym[w] if rng.random() < share else rng.choice(WORDS) for w in words]
        kept = sum(synonym[w] == x for w, x in zip(words, b, strict=True)) / len(words)
        a_text = " ".join(words)
        if binary:
            rows.append(f"{a_text}\t{' '.join(b)}\t{int(kept >= 0.5)}")
        else:
            rows.append(f"{5 * kept:.3f}\t{a_text}\t{' '.join(b)}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune-data")
    rng = random.Random(5)
    positives = []
    for q in sentences(160, seed=6):
        doc = q.split() + [rng.choice(WORDS) for _ in range(4)]
        rng.shuffle(doc)
        positives.append(f"{q}\t{' '.join(doc)}")
    (root / "positives.tsv").write_text("\n".join(positives) + "\n")
    return {
        "sts_train": write_synonym_file(root / "train.tsv", 240, seed=2, binary=False),
        "sts_dev": write_synonym_file(root / "dev.tsv", 100, seed=3, binary=False),
        "bin_train": write_binary_file(root / "bin-train.tsv", 240, seed=4),
        "bin_dev": write_binary_file(root / "bin-dev.tsv", 100, seed=5),
        "syn_train": write_synonym_file(root / "syn-train.tsv", 240, seed=7, binary=True),
        "syn_dev": write_synonym_file(root / "syn-dev.tsv", 100, seed=8, binary=True),
        "positives": root / "positives.tsv",
    }


def options(model: Path, pairs: list[Path], out: Path, **overrides: Any) -> FinetuneOptions:
    """Small single-threaded runs: one thread keeps CPU results bit-for-bit repeatable."""
    settings: dict[str, Any] = {
        "model": str(model),
        "pairs": pairs,
        "out": out,
        "objective": "cosent",
        "epochs": 2,
        "batch_size": 16,
        "lr": 1e-3,
        "max_length": 48,
        "patience": 0,
        "threads": 1,
        "progress": False,
    }
    settings.update(overrides)
    return FinetuneOptions(**settings)


def figures(card: dict[str, Any]) -> list[float]:
    return [float(p["figure"]) for p in card["dev_curve"]]


def test_cosent_raises_dev_spearman_on_graded_and_binary_labels(
    tiny_checkpoint: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    graded = finetune(
        options(
            tiny_checkpoint, [data["sts_train"]], tmp_path / "g", dev=[data["sts_dev"]], epochs=3
        )
    )
    curve = figures(graded)
    assert len(curve) == 4 and max(curve[1:]) > curve[0] + 20  # before, after each epoch
    assert graded["dev_best"] == max(curve) and graded["data"]["kind"] == "graded"

    binary = finetune(
        options(
            tiny_checkpoint,
            [data["syn_train"]],
            tmp_path / "b",
            dev=[data["syn_dev"]],
            epochs=3,
        )
    )
    auc = [p["sets"]["syn-dev.tsv"]["auc"] for p in binary["dev_curve"]]
    assert binary["data"]["kind"] == "binary" and max(auc[1:]) > auc[0] + 10, auc


def test_mnrl_lowers_its_loss_and_scores_a_beir_dev_split(
    tiny_checkpoint: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    run = finetune(
        options(
            tiny_checkpoint,
            [data["positives"]],
            tmp_path / "m",
            objective="mnrl",
            epochs=4,
            log_every=5,
        )
    )
    losses = [e["loss"] for e in run["loss_log"]]
    assert losses[-1] < 0.7 * losses[0]

    from models.finetune_data import split_pairs

    split_pairs(write_beir(tmp_path / "beir", 40), tmp_path / "cut", dev_share=0.25, seed=0)
    beir = finetune(
        options(
            tiny_checkpoint,
            [tmp_path / "cut"],
            tmp_path / "mb",
            objective="mnrl",
            dev=[tmp_path / "cut"],
            epochs=1,
            batch_size=8,
        )
    )
    point = beir["dev_curve"][-1]["sets"]["cut"]
    assert point["queries"] == 10 and 0 <= point["ndcg@10"] <= 100
    assert beir["data"]["train"] == [{"path": "cut", "kind": "positive", "pairs": 30}]


def test_cross_encoder_learns_a_pair_task_and_loads_as_a_classifier(
    tiny_checkpoint: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "x"
    run = finetune(
        options(
            tiny_checkpoint,
            [data["bin_train"]],
            out,
            objective="cross",
            dev=[data["bin_dev"]],
            epochs=4,
            lr=3e-3,
        )
    )
    curve = figures(run)
    assert max(curve[1:]) > curve[0] + 15, curve
    assert run["train_items"] == 2 * 240  # both orders

    net = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert net.config.num_labels == 1
    tok = AutoTokenizer.from_pretrained(str(out))
    from models.finetune_data import read_pair_data
    from models.finetune_models import pair_figures

    dev = read_pair_data([data["bin_dev"]])
    enc = tok(dev.a, dev.b, padding=True, truncation=True, max_length=48, return_tensors="pt")
    assert enc["token_type_ids"].max() == 1  # the pair is read jointly, segments 0/1
    with torch.no_grad():
        logits = net(**enc).logits.squeeze(-1).numpy()
    # The saved checkpoint is the best one, and it scores as the run said it did.
    again = pair_figures(logits.astype(np.float64), dev.gold, True, 0.0)
    assert again["spearman"] == pytest.approx(run["dev_best"], abs=0.05)

    # `simsvc evaluate-checkpoint` scores the output the same way, and with both orders.
    from models.finetune_eval import evaluate_checkpoint

    report = evaluate_checkpoint(str(out), [data["bin_dev"]], max_length=48, threads=1)
    scored = report["figures"]["bin-dev.tsv"]
    assert report["kind"] == "cross-encoder" and scored["spearman"] == again["spearman"]
    assert {"spearman_both_orders", "auc_both_orders", "accuracy"} <= scored.keys()


def test_freeze_fits_the_classifier_on_frozen_pooled_cls(
    tiny_checkpoint: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "f"
    # Frozen random features are weak: the linear layer needs more pairs than fine-tuning.
    train = write_binary_file(tmp_path / "train.tsv", 800, seed=9)
    card = finetune(
        options(
            tiny_checkpoint,
            [train],
            out,
            objective="cross",
            freeze=True,
            dev=[data["bin_dev"]],
        )
    )
    assert card["objective"] == "cross --freeze" and "pooled [CLS]" in card["features"]
    assert card["fit"]["cv_spearman"] > 5 and card["dev_best"] > 5

    net = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    init = load_file(str(tiny_checkpoint / "model.safetensors"))
    saved = load_file(str(out / "model.safetensors"))
    frozen = [k for k in init if f"bert.{k}" in saved]
    assert frozen and all((init[k] == saved[f"bert.{k}"]).all() for k in frozen)

    # The classifier is the fitted linear model: its logit is w . pooled + b.
    from models.finetune_freeze import pooled_features

    tok = AutoTokenizer.from_pretrained(str(out))
    a, b = ["the man plays the guitar"], ["a man plays guitar"]
    feats = pooled_features(net, tok, a, b, 48, torch.device("cpu"), "fp32")
    w = net.classifier.weight.detach().numpy()[0]
    enc = tok(a, b, return_tensors="pt")
    with torch.no_grad():
        logit = float(net(**enc).logits[0, 0])
    assert abs(w).sum() > 0
    assert logit == pytest.approx(float(feats[0] @ w + net.classifier.bias.item()), abs=1e-4)


def saved_state(out: Path) -> dict[str, Any]:
    tensors = {}
    for name in ("model", "optimizer", "rng"):
        for key, value in load_file(str(out / "state" / f"{name}.safetensors")).items():
            tensors[f"{name}:{key}"] = value
    return tensors


@pytest.mark.parametrize("objective", ["cosent", "cross", "mnrl"])
def test_resuming_gives_the_same_run_as_not_stopping(
    objective: str, tiny_checkpoint: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    pairs = [data["positives"]] if objective == "mnrl" else [data["sts_train"]]
    dev = [] if objective == "mnrl" else [data["sts_dev"]]
    common = {"objective": objective, "dev": dev, "epochs": 2, "eval_every": 7, "save_every": 4}
    straight = finetune(options(tiny_checkpoint, pairs, tmp_path / "straight", **common))
    first = finetune(options(tiny_checkpoint, pairs, tmp_path / "split", stop_after=11, **common))
    assert first["steps"] == 11 and first["stopped"] == "stop-after 11"
    resumed = finetune(options(tiny_checkpoint, pairs, tmp_path / "split", resume=True, **common))
    assert straight["steps"] == resumed["steps"] == straight["horizon"]

    a, b = saved_state(tmp_path / "straight"), saved_state(tmp_path / "split")
    assert a.keys() == b.keys() and any(k.startswith("optimizer:") for k in a)
    assert [k for k in a if not (a[k] == b[k]).all()] == []
    assert [(p["step"], p["figure"]) for p in straight["dev_curve"]] == [
        (p["step"], p["figure"]) for p in resumed["dev_curve"]
    ]
    untimed = [
        [{k: v for k, v in e.items() if k != "t"} for e in r["loss_log"]]
        for r in (straight, resumed)
    ]
    assert untimed[0] == untimed[1]
    assert straight["best_step"] == resumed["best_step"]
    best_a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    best_b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert all((best_a[k] == best_b[k]).all() for k in best_a)


def test_early_stop_keeps_the_best_checkpoint(
    tiny_checkpoint: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    run = finetune(
        options(
            tiny_checkpoint,
            [data["sts_train"]],
            tmp_path / "e",
            dev=[data["sts_dev"]],
            lr=3e-2,  # far too high: the dev figure falls after the first evaluations
            epochs=6,
            eval_every=3,
            patience=2,
        )
    )
    assert run["stopped"].startswith("early stop") and run["steps"] < run["horizon"]
    curve = figures(run)
    assert run["dev_best"] == max(curve) and curve[-1] < run["dev_best"]
    assert all(c < run["dev_best"] for c in curve[-2:])


def test_cli_finetune_writes_a_bi_encoder_that_builds_a_bundle(
    tiny_checkpoint: Path,
    data: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from transformers import AutoModel

    from models.export_onnx import _read_st_config

    out = tmp_path / "bi"
    args = ["finetune", "--model", str(tiny_checkpoint), "--pairs", str(data["sts_train"])]
    args += ["--dev", str(data["sts_dev"]), "--out", str(out), "--objective", "cosent"]
    args += ["--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "--max-length", "48"]
    args += ["--threads", "1", "--no-progress"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["stopped"] == "done" and summary["dev_best"] is not None
    card = json.loads((out / "card.json").read_text())
    assert card["base_model"] == tiny_checkpoint.name and card["device"] == "cpu"
    assert card["data"]["train"][0] == {"path": "train.tsv", "kind": "graded", "pairs": 240}
    assert len(card["seconds_per_epoch"]) == 2 and card["hyperparameters"]["lr"] == 1e-3

    assert AutoModel.from_pretrained(str(out)).config.hidden_size == 32
    assert _read_st_config(str(out)) == ("mean", 48)
    assert json.loads((out / "modules.json").read_text())[1]["path"] == "1_Pooling"

    # Starting again in the same folder needs --resume or --force; resuming needs the same
    # settings.
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--lr", "5e-4", "--resume"]) == 2
    assert "lr" in capsys.readouterr().err

    # Through ONNX: `--pooling auto` takes the declared mean pooling, and the bundle scores
    # dev as the fine-tuning run did.
    bundle = tmp_path / "bundle"
    assert main(["build", "--model", str(out), "--out", str(bundle), "--threads", "1"]) == 0
    capsys.readouterr()
    from models.evaluate import evaluate_bundle
    from service.runtime.bundle import load_bundle

    manifest = load_bundle(bundle).manifest
    assert manifest.pooling == "mean" and manifest.max_length == 48
    served = evaluate_bundle(bundle, [data["sts_dev"]], threads=1)["dev.tsv"]
    assert served["spearman"]["raw_cosine"] == pytest.approx(card["dev_best"], abs=0.05)

    ev = ["evaluate-checkpoint", "--model", str(out), "--dev", str(data["sts_dev"])]
    assert main([*ev, "--max-length", "48", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "bi-encoder (mean pooling)"
    assert report["figures"]["dev.tsv"]["spearman"] == card["dev_best"]


def test_cli_split_pairs_and_bad_input(
    data: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["split-pairs", str(data["bin_train"]), "--out", str(tmp_path / "cut")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report[str(data["bin_train"])]["pairs"] == {"train": 192, "dev": 48}
    assert (tmp_path / "cut" / "bin-train" / "dev.tsv").is_file()

    base = ["finetune", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o")]
    base += ["--epochs", "1", "--no-progress"]
    assert main([*base, "--pairs", str(tmp_path / "missing.tsv"), "--objective", "cosent"]) == 2
    assert "missing.tsv" in capsys.readouterr().err
    beir = write_beir(tmp_path / "beir")
    cross = [*base, "--pairs", str(data["sts_train"]), "--objective", "cross"]
    assert main([*cross, "--dev", str(beir)]) == 2
    assert "mnrl" in capsys.readouterr().err
    assert main([*base, "--pairs", str(data["positives"]), "--objective", "cosent"]) == 2
    assert "labels" in capsys.readouterr().err


def test_label_pairs_scores_new_neighbour_pairs_with_the_cross_encoder(
    tiny_checkpoint: Path,
    tiny_cross_checkpoint: Path,
    data: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from models.finetune_augment import neighbour_pairs
    from models.finetune_data import read_pair_data

    # Rows 0/1 and 2/3 are near each other: each row's nearest pairs it with its partner.
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert neighbour_pairs(vectors, 1) == [(0, 1), (2, 3)]

    # A random-weight tiny cross-encoder: its logits spread, and it is far from symmetric.
    cross = tiny_cross_checkpoint
    silver = tmp_path / "silver.tsv"
    args = ["label-pairs", "--cross-model", str(cross), "--bi-model", str(tiny_checkpoint)]
    args += ["--pairs", str(data["sts_train"]), "--out", str(silver), "--top-k", "2"]
    assert main([*args, "--max-length", "48", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    labelled = read_pair_data([silver])
    gold = read_pair_data([data["sts_train"]])
    assert labelled.kind == "graded" and len(labelled) == report["pairs"] > 100
    assert labelled.gold.min() >= 0 and labelled.gold.max() <= 5
    gold_pairs = set(zip(gold.a, gold.b, strict=True))
    new = set(zip(labelled.a, labelled.b, strict=True))
    assert not new & gold_pairs and not {(b, a) for a, b in new} & gold_pairs
    assert set(labelled.a) | set(labelled.b) <= set(gold.a) | set(gold.b)  # train text only
    # The scores are the saved cross-encoder's probabilities x 5, its logits of (a, b) and
    # (b, a) averaged by default; --no-both-orders reads the sampled order only.
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    net = AutoModelForSequenceClassification.from_pretrained(str(cross)).eval()
    tok = AutoTokenizer.from_pretrained(str(cross))

    def logits(x: list[str], y: list[str]) -> np.ndarray:
        with torch.no_grad():
            batch = tok(x, y, padding=True, return_tensors="pt")
            out: np.ndarray = net(**batch).logits[:, 0].numpy()
            return out

    ab, ba = logits(labelled.a, labelled.b), logits(labelled.b, labelled.a)
    # The model alone is not symmetric, so the file can tell the two readings apart.
    assert np.abs(ab - ba).max() > 1e-3
    assert report["both_orders"] is True
    both = 5 / (1 + np.exp(-(ab + ba) / 2))
    np.testing.assert_allclose(labelled.gold, both, atol=2e-4)
    one = tmp_path / "silver-one-order.tsv"
    args[args.index(str(silver))] = str(one)
    assert main([*args, "--max-length", "48", "--threads", "1", "--no-both-orders"]) == 0
    assert json.loads(capsys.readouterr().out)["both_orders"] is False
    single = read_pair_data([one])
    assert (single.a, single.b) == (labelled.a, labelled.b)
    np.testing.assert_allclose(single.gold, 5 / (1 + np.exp(-ab)), atol=2e-4)
    assert np.abs(single.gold - labelled.gold).max() > 5e-4
