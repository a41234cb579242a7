"""Pretraining end to end on the tiny BERT: exact resume, the CLI, a bundle from the output."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from models.pretrain import PretrainOptions, pretrain
from models.pretrain_eval import evaluate_mlm
from service.cli.main import main
from service.runtime.bundle import load_bundle


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 documents of 1-5 paragraphs over the tiny vocabulary."""
    from tests.builders import sentences

    rng = random.Random(11)
    pool = iter(sentences(3000, seed=12))
    docs = [
        "\n".join(
            ". ".join(next(pool) for _ in range(rng.randint(1, 3))) + "."
            for _ in range(rng.randint(1, 5))
        )
        for _ in range(200)
    ]
    path = tmp_path_factory.mktemp("pretrain-corpus") / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n")
    return path


def options(corpus: Path, init: Path, out: Path, **overrides: Any) -> PretrainOptions:
    """Small, single-threaded runs: one thread keeps CPU results bit-for-bit repeatable."""
    settings: dict[str, Any] = {
        "corpus": [corpus],
        "out": out,
        "init": str(init),
        "max_length": 48,
        "batch_size": 8,
        "steps": 8,
        "heldout": 0.05,
        "eval_instances": 32,
        "eval_every": 3,
        "save_every": 3,
        "log_every": 2,
        "threads": 1,
        "progress": False,
    }
    settings.update(overrides)
    return PretrainOptions(**settings)


def saved_state(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    tensors = {}
    for name in ("model", "optimizer", "rng"):
        for key, value in load_file(str(out / "state" / f"{name}.safetensors")).items():
            tensors[f"{name}:{key}"] = value
    return tensors, json.loads((out / "state" / "state.json").read_text())


def test_resuming_gives_the_same_state_as_not_stopping(
    corpus: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    straight = pretrain(options(corpus, tiny_checkpoint, tmp_path / "straight"))
    first = pretrain(options(corpus, tiny_checkpoint, tmp_path / "split", stop_after=4))
    assert first["step"] == 4 and first["stopped"] == "stop-after 4"
    resumed = pretrain(options(corpus, tiny_checkpoint, tmp_path / "split", resume=True))
    assert straight["step"] == resumed["step"] == 8

    # Same process, same single thread, deterministic CPU kernels: equal to the last bit.
    a, state_a = saved_state(tmp_path / "straight")
    b, state_b = saved_state(tmp_path / "split")
    assert a.keys() == b.keys() and any(k.startswith("optimizer:") for k in a)
    assert [k for k in a if not (a[k] == b[k]).all()] == []
    assert state_a["mask_rng"] == state_b["mask_rng"]
    assert state_a["param_groups"] == state_b["param_groups"]
    run_a, run_b = state_a["run"], state_b["run"]
    for key in ("step", "epoch", "consumed", "horizon", "recent"):
        assert run_a[key] == run_b[key], key
    strip = [{k: v for k, v in e.items() if k != "t"} for e in run_a["log"]]
    assert strip == [{k: v for k, v in e.items() if k != "t"} for e in run_b["log"]]
    # The split run also scored the held-out split where it stopped (step 4).
    by_step = {e["step"]: e for e in run_b["heldout"]}
    assert [e["step"] for e in run_a["heldout"]] == [0, 3, 6, 8]
    assert all(by_step[e["step"]] == e for e in run_a["heldout"])
    assert (
        load_file(str(tmp_path / "straight" / "model.safetensors")).keys()
        == load_file(str(tmp_path / "split" / "model.safetensors")).keys()
    )


def test_training_lowers_the_heldout_loss(
    corpus: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    run = pretrain(
        options(corpus, tiny_checkpoint, tmp_path / "o", steps=30, lr=3e-3, eval_every=0)
    )
    before, after = run["heldout"][0], run["heldout"][-1]
    assert (before["step"], after["step"]) == (0, 30)
    assert after["mlm_loss"] < before["mlm_loss"] - 0.3
    assert run["heads_initialised"], "the tiny checkpoint has no heads: they start random"
    assert [e["step"] for e in run["log"]] == list(range(2, 31, 2))


def test_cli_pretrain_then_build_and_evaluate_mlm(
    corpus: Path,
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "adapted"
    args = ["pretrain", "--corpus", str(corpus), "--out", str(out), "--init", str(tiny_checkpoint)]
    args += ["--steps", "6", "--max-length", "48", "--batch-size", "8", "--eval-instances", "32"]
    args += ["--heldout", "0.05", "--threads", "1", "--no-progress"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 6 and summary["stopped"] == "done"

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForPreTraining"]
    weights = load_file(str(out / "model.safetensors"))
    assert any(k.startswith("cls.predictions.") for k in weights)
    assert any(k.startswith("cls.seq_relationship.") for k in weights)
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    init = load_file(str(tiny_checkpoint / "model.safetensors"))
    name = next(k for k in init if "word_embeddings" in k)
    assert not (weights[f"bert.{name}"] == init[name]).all(), "training changed the encoder"

    # Starting again in the same folder needs --resume or --force; resuming needs the same
    # settings.
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args[:-1], "--lr", "5e-4", "--resume"]) == 2
    assert "lr" in capsys.readouterr().err

    bundle = tmp_path / "bundle"
    build = ["build", "--model", str(out), "--out", str(bundle), "--pooling", "mean"]
    assert main([*build, "--max-length", "48", "--threads", "1"]) == 0
    assert load_bundle(bundle).manifest.dims.hidden == config["hidden_size"]
    capsys.readouterr()

    ev = ["evaluate-mlm", "--model", str(out), "--corpus", str(corpus), "--instances", "40"]
    assert main([*ev, "--max-length", "48", "--threads", "1", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["instances"] == 40 and figures["masked_tokens"] > 0
    assert 0.0 <= figures["mlm_acc"] <= 1.0 and 0.0 <= figures["nsp_acc"] <= 1.0
    log = json.loads((out / "pretrain_log.json").read_text())
    assert figures["own_heldout"]["mlm_acc"] == log["heldout"][-1]["mlm_acc"]
    assert main([*ev, "--max-length", "48", "--threads", "1"]) == 0
    assert "MLM accuracy" in capsys.readouterr().out


def test_evaluate_mlm_refuses_a_checkpoint_without_heads(
    corpus: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["evaluate-mlm", "--model", str(tiny_checkpoint), "--corpus", str(corpus)]
    assert main(args) == 2
    assert "no trained MLM/NSP heads" in capsys.readouterr().err


def test_from_config_starts_from_seeded_random_weights(
    corpus: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    runs = []
    for name in ("a", "b"):
        # The tokenizer is found beside the config.
        opts = options(corpus, tiny_checkpoint, tmp_path / name, steps=2)
        opts.init, opts.config = None, tiny_checkpoint / "config.json"
        pretrain(opts)
        runs.append(load_file(str(tmp_path / name / "model.safetensors")))
    assert [k for k in runs[0] if not (runs[0][k] == runs[1][k]).all()] == []
    init = load_file(str(tiny_checkpoint / "model.safetensors"))
    name = next(k for k in init if "word_embeddings" in k)
    assert not (runs[0][f"bert.{name}"] == init[name]).all()


def test_time_budget_sets_the_horizon_and_bounds_the_run(
    corpus: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    run = pretrain(options(corpus, tiny_checkpoint, tmp_path / "o", steps=None, time_budget=3))
    assert run["horizon"] > 1 and run["step"] >= 1
    assert run["stopped"] in ("done", "time budget")
    # The budget is checked before each step, and the saves every 3 steps are not in the
    # horizon's estimate (the held-out scores are): a run may end one step, one evaluation
    # and one save past it (a fraction of a second here, more on a loaded machine).
    assert run["seconds"] + run["eval_seconds"] < 3 + 1.5
    if run["stopped"] == "time budget":
        assert run["step"] < run["horizon"]


@pytest.mark.slow
def test_reference_checkpoint_predicts_masked_tokens_and_next_sentences(shared: Path) -> None:
    figures = evaluate_mlm(
        str(shared / "models" / "refbert-en-L6-H384"),
        [shared / "data" / "corpus" / "en-wiki-gutenberg-sample.txt.xz"],
        instances=64,
        pool_chars=200_000,
    )
    # Far above chance (1/30522 and 1/2): the heads load and the instances match its training.
    assert figures["instances"] == 64
    assert figures["mlm_acc"] > 0.3 and figures["nsp_acc"] > 0.8
    assert figures["own_heldout"] is not None
