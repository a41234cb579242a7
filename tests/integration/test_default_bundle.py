"""The default bundle of `simsvc serve`: its recipe per model, the build in a child process
(the server never holds torch), and the real multilingual default (slow tier)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.cli.default_bundle import (
    ENGLISH,
    MULTILINGUAL,
    build_command,
    default_options,
    recipe_for,
)
from service.settings import Settings


def _fake_shared(root: Path, data: dict[str, Path], languages: tuple[str, ...]) -> Path:
    for lang in languages:
        folder = root / "data" / f"stsb-{lang}"
        folder.mkdir(parents=True)
        suffix = "tsv" if lang == "en" else "txt"
        shutil.copy(data["train"], folder / f"train.{suffix}")
        shutil.copy(data["dev"], folder / f"dev.{suffix}")
    return root


def test_the_multilingual_recipe_fits_and_judges_on_both_languages(
    tiny_data: dict[str, Path], tmp_path: Path
) -> None:
    shared = _fake_shared(tmp_path / "shared", tiny_data, ("en", "zh"))
    e5 = shared / "models" / "multilingual-e5-small-enzh"
    e5.mkdir(parents=True)
    (e5 / "config.json").write_text("{}")
    assert recipe_for(str(e5)) is MULTILINGUAL and recipe_for("x/all-MiniLM-L6-v2") is ENGLISH
    opts = default_options(Settings(shared=shared, cache_dir=tmp_path / "c"))
    assert opts.model == str(e5) and opts.whiten == "auto"
    names = [p.name for p in opts.whiten_on]
    assert names == ["train.tsv", "train.txt"] == [p.name for p in opts.head_files]
    assert [p.name for p in opts.eval_on] == ["dev.tsv", "dev.txt"]
    assert opts.quantize is None and opts.fit_sample == MULTILINGUAL.fit_sample  # fp32
    int8 = default_options(
        Settings(shared=shared, cache_dir=tmp_path / "c", default_quantize="int8-channel")
    )
    assert int8.quantize == "int8-channel" and int8.out != opts.out  # one setting away
    command = build_command(opts)
    assert command.count("--head-pairs") == 2 and command.count("--eval-on") == 2
    # one setting away: SIMSVC_MODEL picks the English recipe, English splits only
    minilm = tmp_path / "all-MiniLM-L6-v2"
    english = default_options(Settings(shared=shared, model=str(minilm), cache_dir=tmp_path))
    assert [p.name for p in english.head_files] == ["train.tsv"]
    assert english.quantize is None and english.fit_sample is None
    assert english.out != opts.out  # each recipe its own cache entry


def test_published_release_checkpoints_make_the_default_bundle(
    tiny_data: dict[str, Path], tmp_path: Path
) -> None:
    """`make models` published into the shared folder: the fine-tuned bi-encoder is the model,
    its cross-encoder and reranker join the bundle; SIMSVC_MODEL still wins, without them."""
    shared = _fake_shared(tmp_path / "shared", tiny_data, ("en", "zh"))
    for name in ("multilingual-e5-small-enzh", "simsvc-e5-bi", "simsvc-e5-cross"):
        (shared / "models" / name).mkdir(parents=True)
        (shared / "models" / name / "config.json").write_text("{}")
    plain = default_options(Settings(shared=shared, cache_dir=tmp_path / "c"))
    assert Path(plain.model).name == "simsvc-e5-bi" and recipe_for(plain.model) is MULTILINGUAL
    assert Path(plain.cross_model or "").name == "simsvc-e5-cross" and plain.reranker is None
    assert "--cross-model" in build_command(plain) and "--reranker" not in build_command(plain)
    (shared / "models" / "simsvc-e5-reranker").mkdir()
    (shared / "models" / "simsvc-e5-reranker" / "config.json").write_text("{}")
    full = default_options(Settings(shared=shared, cache_dir=tmp_path / "c"))
    assert Path(full.reranker or "").name == "simsvc-e5-reranker" and full.out != plain.out
    chosen = default_options(
        Settings(shared=shared, model=str(shared / "models" / "multilingual-e5-small-enzh"))
    )
    assert chosen.cross_model is None and chosen.reranker is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_default(
    tmp_path: Path, env: dict[str, str], timeout: float
) -> tuple[subprocess.Popen[bytes], str, Path, float]:
    """`simsvc serve` with no bundle; returns once /ready answers (and how long it took)."""
    port, log = _free_port(), tmp_path / "serve.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            env={**os.environ, "SIMSVC_DATA_DIR": str(tmp_path / "data"), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    while time.monotonic() - started < timeout:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return proc, url, log, time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise AssertionError(f"not ready in {timeout} s: {log.read_text()[-3000:]}")


def _maps_and_rss(pid: int) -> tuple[str, int]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return maps, rss_kb * 1024


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads /proc (Linux)")
def test_first_start_builds_in_a_child_and_the_server_never_loads_torch(
    tiny_checkpoint: Path, tiny_data: dict[str, Path], tmp_path: Path
) -> None:
    shared = _fake_shared(tmp_path / "shared", tiny_data, ("en",))
    env = {
        "SIMSVC_MODEL": str(tiny_checkpoint),
        "SIMSVC_SHARED": str(shared),
        "SIMSVC_CACHE_DIR": str(tmp_path / "cache"),
        "SIMSVC_THREADS": "1",
    }
    proc, url, log, _ = _serve_default(tmp_path, env, timeout=240)
    try:
        res = httpx.post(
            f"{url}/v1/similarity", json={"pairs": [{"a": "the cat", "b": "the cat"}]}, timeout=30
        )
        assert res.status_code == 200 and res.json()["results"][0]["score"] > 0.99
        maps, _rss = _maps_and_rss(proc.pid)
        assert "building the default bundle" in log.read_text()
        # the child loaded torch (its shared objects); the server never mapped them
        assert "libtorch" not in maps and "/torch/" not in maps
        assert "onnxruntime" in maps  # the check does see the server's libraries
    finally:
        proc.terminate()
        proc.wait(30)
    assert any((tmp_path / "cache" / "bundles").iterdir())


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads /proc (Linux)")
def test_the_multilingual_default_answers_english_and_chinese(shared: Path, tmp_path: Path) -> None:
    """The real default: multilingual-e5-small-enzh from ../shared, built on first start."""
    env = {
        "SIMSVC_SHARED": str(shared),
        "SIMSVC_CACHE_DIR": str(tmp_path / "cache"),
        "SIMSVC_MODEL": "",  # unset: the default
    }
    proc, url, _log, took = _serve_default(tmp_path, env, timeout=900)
    try:
        pairs = [
            {"a": "A man is playing a guitar.", "b": "A man plays the guitar."},
            {"a": "A man is playing a guitar.", "b": "The stock market fell sharply."},
            {"a": "一个男人在弹吉他。", "b": "一个人正在弹吉他。"},
            {"a": "一个男人在弹吉他。", "b": "股市今天大跌。"},
        ]
        res = httpx.post(f"{url}/v1/similarity", json={"pairs": pairs}, timeout=60)
        assert res.status_code == 200, res.text
        scores = [r["probability"] for r in res.json()["results"]]
        assert scores[0] > scores[1] and scores[2] > scores[3]
        assert res.json()["model"] == "multilingual-e5-small-enzh"
        info = httpx.get(f"{url}/info", timeout=10).json()
        evaluation = info["bundle"]["evaluation"]
        assert set(evaluation) == {"dev.tsv", "dev.txt"}
        maps, rss = _maps_and_rss(proc.pid)
        assert "libtorch" not in maps
        print(f"\nready in {took:.0f} s; server RSS {rss / 2**20:.0f} MiB; dev {evaluation}")
        assert rss < 600 * 2**20
    finally:
        proc.terminate()
        proc.wait(30)
