"""`simsvc build`, `simsvc evaluate` and the default bundle of `simsvc serve`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.cli.default_bundle import ensure_default_bundle
from service.cli.main import main
from service.runtime.bundle import load_bundle, read_manifest
from service.settings import Settings


def test_build_and_evaluate_commands(
    tiny_checkpoint: Path,
    tiny_data: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "b"
    assert (
        main(
            [
                "build",
                "--model",
                str(tiny_checkpoint),
                "--out",
                str(out),
                "--pooling",
                "first_last_avg",
                "--whiten-on",
                str(tiny_data["corpus"]),
                "--head-pairs",
                str(tiny_data["train"]),
                "--head",
                "svm",
                "--calibration",
                "isotonic",
                "--max-length",
                "48",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    manifest = load_bundle(out).manifest
    assert manifest.head is not None and manifest.head.kind == "svm"
    assert manifest.head.calibration == "isotonic" and manifest.max_length == 48
    capsys.readouterr()
    assert (
        main(
            ["evaluate", "--bundle", str(out), "--sts", str(tiny_data["dev"]), "--json", "--record"]
        )
        == 0
    )
    figures = json.loads(capsys.readouterr().out)["dev.tsv"]
    assert figures["pairs"] == 120
    assert set(figures["spearman"]) == {"raw_cosine", "whitened_cosine", "head_probability"}
    assert (
        figures["anisotropy"]["whitened"]["mean_cosine"]
        < figures["anisotropy"]["raw"]["mean_cosine"]
    )
    assert read_manifest(out).evaluation["dev.tsv"] == figures
    load_bundle(out)  # recording kept the bundle valid
    assert main(["evaluate", "--bundle", str(out), "--sts", str(tiny_data["dev"])]) == 0
    assert "white cos" in capsys.readouterr().out


def test_default_bundle_is_built_once_then_cached(
    tiny_checkpoint: Path, tiny_data: dict[str, Path], tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    (shared / "data" / "stsb-en").mkdir(parents=True)
    shutil.copy(tiny_data["train"], shared / "data" / "stsb-en" / "train.tsv")
    shutil.copy(tiny_data["dev"], shared / "data" / "stsb-en" / "dev.tsv")
    settings = Settings(
        model=str(tiny_checkpoint), shared=shared, cache_dir=tmp_path / "cache", threads=1
    )
    messages: list[str] = []
    first = ensure_default_bundle(settings, messages.append)
    manifest = load_bundle(first).manifest
    assert manifest.head is not None
    # --whiten auto, judged on the shared dev split: kept only if it raised dev Spearman
    auto = manifest.whitening.auto
    assert auto is not None and auto.data == "dev.tsv"
    assert manifest.whitening.fitted == auto.kept
    assert auto.kept == (auto.spearman["whitened_cosine"] > auto.spearman["raw_cosine"])
    assert "dev.tsv" in manifest.evaluation
    stamp = (first / "model.onnx").stat().st_mtime_ns
    second = ensure_default_bundle(settings, messages.append)
    assert second == first and (first / "model.onnx").stat().st_mtime_ns == stamp
    assert any("using cached" in m for m in messages)


def test_default_model_prefers_env_then_shared_e5_then_minilm_then_reference(
    tmp_path: Path,
) -> None:
    from service.cli.default_bundle import HUB_FALLBACK, default_model

    assert default_model(Settings(model="org/some-bert", shared=tmp_path)) == "org/some-bert"
    assert default_model(Settings(shared=tmp_path)) == HUB_FALLBACK
    for name in ("refbert-en-L6-H384", "all-MiniLM-L6-v2", "multilingual-e5-small-enzh"):
        ckpt = tmp_path / "models" / name
        ckpt.mkdir(parents=True)
        (ckpt / "config.json").write_text("{}")
        assert default_model(Settings(shared=tmp_path)) == str(ckpt)
    assert default_model(Settings(model="org/some-bert", shared=tmp_path)) == "org/some-bert"


def test_whiten_auto_drops_a_whitening_that_lowers_dev_spearman(
    tiny_checkpoint: Path,
    tiny_data: dict[str, Path],
    tmp_path: Path,
    make_client: Callable[..., TestClient],
) -> None:
    """Kept at full k (it raises the tiny model's dev Spearman); cut to 2 components it
    lowers it, and auto serves the identity instead, saying so in the manifest."""
    from models.build import BuildOptions, build_bundle

    figures = {}
    for k in (None, 2):
        manifest = build_bundle(
            BuildOptions(
                model=str(tiny_checkpoint),
                out=tmp_path / f"k{k}",
                pooling="mean",
                max_length=48,
                whiten_on=[tiny_data["corpus"]],
                whiten_dim=k,
                whiten="auto",
                eval_on=[tiny_data["dev"]],
                threads=1,
            ),
            say=lambda _m: None,
        )
        auto = manifest.whitening.auto
        assert auto is not None
        figures[k] = (auto, manifest)
    kept, full = figures[None]
    assert kept.kept and full.whitening.fitted and full.dims.output == full.dims.hidden
    assert kept.spearman["whitened_cosine"] > kept.spearman["raw_cosine"]
    dropped, cut = figures[2]
    assert not dropped.kept and not cut.whitening.fitted
    assert dropped.spearman["whitened_cosine"] < dropped.spearman["raw_cosine"]
    assert cut.dims.output == cut.dims.hidden  # the identity is served, not the 2-dim cut
    served = cut.evaluation["dev.tsv"]["spearman"]
    assert served["whitened_cosine"] == served["raw_cosine"]
    client = make_client(Settings(bundle=tmp_path / "k2", threads=1))
    info = client.get("/info").json()["whitening"]
    assert not info["fitted"] and "--whiten auto dropped" in info["note"]
    assert info["auto"]["kept"] is False
    with pytest.raises(ValueError, match="--eval-on"):
        build_bundle(
            BuildOptions(
                model=str(tiny_checkpoint),
                out=tmp_path / "x",
                whiten_on=[tiny_data["corpus"]],
                whiten="auto",
            )
        )


def test_serving_without_bundle_or_build_extra_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.cli.default_bundle

    monkeypatch.setattr(
        service.cli.default_bundle, "build_extra_missing", lambda: "torch is not installed"
    )
    with pytest.raises(SystemExit) as info:
        ensure_default_bundle(Settings(shared=tmp_path, cache_dir=tmp_path / "c"))
    assert "SIMSVC_BUNDLE" in str(info.value) and "simsvc[build]" in str(info.value)


def test_unreachable_model_says_what_to_set(tmp_path: Path) -> None:
    settings = Settings(
        model=str(tmp_path / "no-such-checkpoint"), shared=tmp_path, cache_dir=tmp_path / "c"
    )
    with pytest.raises(SystemExit) as info:
        ensure_default_bundle(settings)
    assert "SIMSVC_MODEL" in str(info.value)


def test_build_with_a_cross_encoder_from_the_command_line(
    tiny_checkpoint: Path,
    tiny_cross_checkpoint: Path,
    tiny_data: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "b"
    argv = ["build", "--model", str(tiny_checkpoint), "--out", str(out), "--max-length", "32"]
    cross = [
        "--cross-model",
        str(tiny_cross_checkpoint),
        "--cross-calibrate-on",
        str(tiny_data["train"]),
        "--cross-calibration",
        "isotonic",
        "--cross-max-length",
        "24",
        "--threads",
        "1",
    ]
    assert main([*argv, *cross, "--eval-on", str(tiny_data["dev"])]) == 0
    printed = capsys.readouterr().out
    assert "cross p" in printed  # the build's evaluation table has the cross columns
    manifest = load_bundle(out).manifest
    assert manifest.cross is not None and manifest.cross.max_length == 24
    assert manifest.cross.calibration.kind == "isotonic"
    assert json.loads((out / "cross_calibration.json").read_text())["kind"] == "isotonic"
    assert main(["evaluate", "--bundle", str(out), "--sts", str(tiny_data["dev"]), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)["dev.tsv"]["spearman"]
    assert figures == manifest.evaluation["dev.tsv"]["spearman"]
    with pytest.raises(ValueError, match="--cross-calibrate-on needs --cross-model"):
        main([*argv, "--out", str(tmp_path / "c"), "--cross-calibrate-on", str(tiny_data["dev"])])
