"""The cross-encoder through a real ONNX graph: a tiny random BertForSequenceClassification
built here, exported, proven against PyTorch, served, and evaluated through the API."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from models.build import BuildOptions, build_bundle
from models.datasets import read_pairs
from models.evaluate import bundle_cross_encoder
from models.export_cross import load_cross_checkpoint, logits_module
from service.errors import BundleError
from service.runtime.bundle import load_bundle, read_manifest, write_manifest
from service.runtime.cross import OnnxCrossEncoder, cross_logits, raw_scores, sigmoid
from service.runtime.encoder import pad_batch, pad_type_ids
from service.settings import Settings
from tests.builders import sentences, write_tiny_cross_checkpoint
from tests.conftest import CROSS_CARD

LONG = " ".join(sentences(12, seed=7))  # past the cross-encoder's 48 tokens
PAIRS = [
    ("a", "the man plays the guitar in the park today"),
    ("the dog runs quickly", "a cat"),
    (LONG, "the man plays"),
    ("red car", LONG),
    ("the woman sings a song", "the woman sings a song"),
    ("sky", "sun"),
]


def _core(bundle_dir: Path) -> OnnxCrossEncoder:
    core = bundle_cross_encoder(load_bundle(bundle_dir), threads=1)
    assert core is not None
    return core


def test_bundle_records_cross_parity_card_and_calibration(tiny_cross_bundle: Path) -> None:
    manifest = load_bundle(tiny_cross_bundle).manifest
    cross = manifest.cross
    assert cross is not None
    assert cross.parity.max_abs_diff <= 1e-4 and cross.parity.tokenizer_match
    assert cross.parity.batches >= 5 and cross.parity.pairs >= 20
    assert cross.fusions.get("Attention") == 2  # the fused graph kept parity
    assert cross.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert cross.num_labels == 1 and cross.score == "logit"
    assert cross.max_length == CROSS_CARD["max_length"]  # taken from the card
    assert cross.card == CROSS_CARD
    assert cross.calibration.kind == "sigmoid" and cross.calibration.data == "train.tsv"
    assert cross.calibration.pairs == 300
    figures = manifest.evaluation["dev.tsv"]["spearman"]
    assert {"cross_score", "cross_probability"} <= set(figures)
    assert {"cross.onnx", "cross_tokenizer.json", "cross_calibration.json"} <= set(manifest.files)


def test_onnx_logits_equal_pytorch_on_padded_mixed_length_pairs(
    tiny_cross_bundle: Path, tiny_cross_checkpoint: Path
) -> None:
    core = _core(tiny_cross_bundle)
    tokens = core.tokenize_pairs(PAIRS)
    assert len({len(t) for t in tokens}) >= 4  # one padded batch of many lengths
    got = core.infer(tokens)["logits"]
    ckpt = load_cross_checkpoint(str(tiny_cross_checkpoint))
    assert not ckpt.model.training
    hf = ckpt.tokenizer(
        [a for a, _ in PAIRS], [b for _, b in PAIRS], truncation=True, max_length=48
    )
    assert [list(t.ids) for t in tokens] == hf["input_ids"]
    assert [list(t.type_ids or []) for t in tokens] == hf["token_type_ids"]
    ids, mask = pad_batch(tokens)
    with torch.no_grad():
        ref = ckpt.model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(pad_type_ids(tokens)),
        ).logits.numpy()
    assert got.shape == (len(PAIRS), 1)
    assert float(np.abs(got - ref).max()) <= 1e-4
    assert float(np.std(ref)) > 0.05  # the pairs really score differently


def test_padding_does_not_change_a_pair_s_logit(tiny_cross_bundle: Path) -> None:
    core = _core(tiny_cross_bundle)
    batch = core.infer(core.tokenize_pairs(PAIRS))["logits"]
    for i, pair in enumerate(PAIRS):
        alone = core.infer(core.tokenize_pairs([pair]))["logits"]
        assert abs(float(alone[0, 0]) - float(batch[i, 0])) <= 1e-5


def test_pairs_are_tokenized_jointly_and_the_longer_side_is_cut(tiny_cross_bundle: Path) -> None:
    core = _core(tiny_cross_bundle)
    (tok,) = core.tokenize_pairs([("the man", "a dog runs")])
    cls, sep = tok.ids[0], tok.ids[3]
    assert list(tok.type_ids or []) == [0, 0, 0, 0, 1, 1, 1, 1]  # [CLS] a [SEP] | b [SEP]
    assert tok.ids[-1] == sep and not tok.truncated
    (cut,) = core.tokenize_pairs([("the man", LONG)])
    assert cut.truncated and len(cut) == core.max_length
    assert list(cut.ids[:4]) == list(tok.ids[:4])  # the short side is kept whole
    assert cut.ids[0] == cls and cut.ids[-1] == sep
    (left,) = core.tokenize_pairs([("the man", LONG)], direction="left")
    (end,) = core.tokenize_pairs([("the man", LONG.split()[-1])])
    assert left.ids[-2] == end.ids[-2]  # left truncation keeps the end of b
    (single,) = core.tokenize_pairs([("the man", None)])
    assert list(single.ids) == list(tok.ids[:4]) and set(single.type_ids or []) == {0}


def test_export_wrapper_is_in_eval_mode_so_dropout_is_off(tiny_cross_checkpoint: Path) -> None:
    ckpt = load_cross_checkpoint(str(tiny_cross_checkpoint))
    module = logits_module(ckpt)
    assert not module.training and not any(m.training for m in module.modules())
    ids = torch.tensor([[2, 10, 11, 3, 12, 3]])
    args = (ids, torch.ones_like(ids), torch.tensor([[0, 0, 0, 0, 1, 1]]))
    with torch.no_grad():
        assert torch.equal(module(*args), module(*args))
        module.train()  # the same wrapper in training mode: dropout makes runs differ
        torch.manual_seed(0)
        assert not torch.equal(module(*args), module(*args))


def test_service_scores_through_the_real_cross_encoder(
    make_client: Callable[..., TestClient], tiny_cross_bundle: Path
) -> None:
    bundle = load_bundle(tiny_cross_bundle)
    assert bundle.cross_calibration is not None
    assert bundle.manifest.cross is not None and bundle.manifest.cross.symmetric  # the default
    core = _core(tiny_cross_bundle)
    given = raw_scores(cross_logits(core, PAIRS))
    reverse = raw_scores(cross_logits(core, [(b, a) for a, b in PAIRS]))
    assert np.abs(given - reverse).max() > 1e-3  # the model alone is not symmetric
    raw = (given + reverse) / 2
    client = make_client(Settings(bundle=tiny_cross_bundle, threads=1))
    body = {"pairs": [{"a": a, "b": b} for a, b in PAIRS], "mode": "cross"}
    res = client.post("/v1/similarity", json=body)
    assert res.status_code == 200, res.text
    results = res.json()["results"]
    assert np.allclose([r["score"] for r in results], sigmoid(raw), atol=1e-5)
    calibrated = bundle.cross_calibration(raw)
    assert np.allclose([r["probability"] for r in results], calibrated, atol=1e-5)
    body["pairs"] = [{"a": b, "b": a} for a, b in PAIRS]
    swapped = client.post("/v1/similarity", json=body).json()["results"]
    assert np.allclose([r["score"] for r in swapped], [r["score"] for r in results], atol=1e-6)

    query, texts = PAIRS[0][0], [b for _, b in PAIRS]
    ranks = client.post("/rerank", json={"query": query, "texts": texts, "raw_scores": True})
    assert ranks.status_code == 200
    expected = raw_scores(cross_logits(_core(tiny_cross_bundle), [(query, t) for t in texts]))
    assert [r["index"] for r in ranks.json()] == list(np.argsort(-expected, kind="stable"))
    assert np.allclose([r["score"] for r in ranks.json()], np.sort(expected)[::-1], atol=1e-5)
    preds = client.post("/predict", json={"inputs": [[query, t] for t in texts]}).json()
    assert np.allclose([p[0]["score"] for p in preds], sigmoid(expected), atol=1e-5)

    info = client.get("/info").json()["cross_encoder"]
    assert info["parity"]["max_abs_diff"] <= 1e-4 and info["card"] == CROSS_CARD
    assert info["calibration"]["kind"] == "sigmoid"
    assert info["symmetric"] is True


def test_two_label_int8_cross_encoder_serves_softmax_and_records_agreement(
    tmp_path: Path,
    tiny_checkpoint: Path,
    tiny_data: dict[str, Path],
    make_client: Callable[..., TestClient],
) -> None:
    import onnx

    ckpt = write_tiny_cross_checkpoint(tmp_path / "two", seed=2, num_labels=2)
    out = tmp_path / "bundle"
    manifest = build_bundle(
        BuildOptions(
            model=str(tiny_checkpoint),
            out=out,
            pooling="mean",
            max_length=64,
            eval_on=[tiny_data["dev"]],
            quantize="int8",
            threads=1,
            cross_model=str(ckpt),
            cross_max_length=40,
            cross_symmetric=False,
        ),
        say=lambda _m: None,
    )
    cross = manifest.cross
    assert cross is not None and cross.card is None and not cross.symmetric
    assert cross.num_labels == 2 and cross.labels == ["dissimilar", "similar"]
    assert cross.score == "logit_difference" and cross.calibration.kind == "logistic"
    assert cross.parity.max_abs_diff <= 1e-4  # the fp32 graph, before quantization
    q = cross.quantization
    assert q is not None and 0.0 < q.max_abs_diff_vs_fp32 < 0.5
    assert set(q.spearman["dev.tsv"]) == {"fp32", "int8"}
    assert (
        q.spearman["dev.tsv"]["int8"] == manifest.evaluation["dev.tsv"]["spearman"]["cross_score"]
    )
    ops = {n.op_type for n in onnx.load(str(out / "cross.onnx")).graph.node}
    assert {"QAttention", "DynamicQuantizeLinear"} & ops, ops
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]

    client = make_client(Settings(bundle=out, threads=1))
    preds = client.post("/predict", json={"inputs": ["the man plays", "a man plays"]}).json()
    assert [p["label"] for p in preds] == sorted(
        ["dissimilar", "similar"],
        key=lambda lab: -next(p["score"] for p in preds if p["label"] == lab),
    )
    assert sum(p["score"] for p in preds) == pytest.approx(1.0, abs=1e-6)
    logits = cross_logits(_core(out), [("the man plays", "a man plays")])[0].astype(np.float64)
    similar = next(p["score"] for p in preds if p["label"] == "similar")
    assert similar == pytest.approx(1 / (1 + np.exp(logits[0] - logits[1])), abs=1e-5)
    sim = client.post(
        "/v1/similarity",
        json={"pairs": [{"a": "the man plays", "b": "a man plays"}], "mode": "cross"},
    ).json()["results"][0]
    assert sim["score"] == pytest.approx(similar, abs=1e-5)
    assert sim["probability"] == pytest.approx(similar, abs=1e-5)  # uncalibrated: its own
    # --no-cross-symmetric: /v1/similarity reads the pair in the order given, like /predict


def test_a_checkpoint_with_three_labels_is_refused(tmp_path: Path) -> None:
    ckpt = write_tiny_cross_checkpoint(tmp_path / "three", num_labels=3)
    with pytest.raises(ValueError, match="1 label"):
        load_cross_checkpoint(str(ckpt))


def test_a_bundle_without_cross_encoder_loads_and_mode_cross_is_424(
    tiny_bundle: Path, tmp_path: Path, make_client: Callable[..., TestClient]
) -> None:
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    data = json.loads((old / "manifest.json").read_text())
    data.pop("cross")  # as written before the cross-encoder existed
    data["whitening"].pop("auto")
    (old / "manifest.json").write_text(json.dumps(data))
    assert load_bundle(old).manifest.cross is None
    client = make_client(Settings(bundle=old, threads=1))
    pairs = [{"a": "the man", "b": "a dog"}]
    resp = client.post("/v1/similarity", json={"pairs": pairs, "mode": "cross"})
    assert resp.status_code == 424 and resp.json()["error_type"] == "no_cross_encoder"
    assert client.post("/v1/similarity", json={"pairs": pairs}).status_code == 200


def test_a_damaged_cross_encoder_part_is_refused(tiny_cross_bundle: Path, tmp_path: Path) -> None:
    from service.main import create_app

    bad = tmp_path / "bad"
    shutil.copytree(tiny_cross_bundle, bad)
    with open(bad / "cross.onnx", "ab") as fh:
        fh.write(b"\0")
    with (
        pytest.raises(BundleError, match=r"cross.onnx has sha256"),
        TestClient(create_app(Settings(bundle=bad))),
    ):
        pass
    shutil.rmtree(bad)
    shutil.copytree(tiny_cross_bundle, bad)
    (bad / "cross_calibration.json").write_text(json.dumps({"kind": "isotonic", "x": [0, 1]}))
    write_manifest(bad, read_manifest(bad))  # hashes fine, contents wrong
    with pytest.raises(BundleError, match="calibration cannot be read"):
        load_bundle(bad)
    (bad / "cross_calibration.json").unlink()
    with pytest.raises(BundleError, match=r"lacks cross_calibration\.json"):
        load_bundle(bad)


def test_runtime_with_a_cross_encoder_imports_neither_torch_nor_transformers(
    tiny_cross_bundle: Path,
) -> None:
    code = textwrap.dedent(f"""
        import sys, time
        from fastapi.testclient import TestClient
        from service.main import create_app
        from service.settings import Settings
        import service.cli.main, models.evaluate
        with TestClient(create_app(Settings(bundle={str(tiny_cross_bundle)!r}, threads=1))) as c:
            for _ in range(500):
                if c.get("/ready").status_code == 200:
                    break
                time.sleep(0.02)
            r = c.post("/rerank", json={{"query": "x", "texts": ["y", "z"]}})
            assert r.status_code == 200, r.text
            r = c.post("/predict", json={{"inputs": ["x", "y"]}})
            assert r.status_code == 200, r.text
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_evaluate_through_a_running_service_equals_the_bundle_s_figures(
    tiny_cross_bundle: Path,
    tiny_data: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`simsvc evaluate --url` scores dev through /v1/similarity (bi and cross) and gets the
    figures the build measured in process; a TEI client reads /predict."""
    from huggingface_hub import InferenceClient

    from service.cli.main import main
    from tests.servers import Server

    offline = load_bundle(tiny_cross_bundle).manifest.evaluation["dev.tsv"]["spearman"]
    server = Server(tiny_cross_bundle, tmp_path / "data", tmp_path / "server.log").start()
    try:
        figures = {}
        for mode in ("bi", "cross"):
            capsys.readouterr()
            argv = ["evaluate", "--url", server.url, "--sts", str(tiny_data["dev"])]
            assert main([*argv, "--mode", mode, "--json", "--batch", "16"]) == 0
            figures[mode] = json.loads(capsys.readouterr().out)["dev.tsv"]
        assert figures["cross"]["pairs"] == len(read_pairs(tiny_data["dev"]).pairs)
        assert figures["bi"]["spearman"]["score"] == pytest.approx(
            offline["whitened_cosine"], abs=0.02
        )
        assert figures["bi"]["spearman"]["probability"] == pytest.approx(
            offline["head_probability"], abs=0.02
        )
        assert figures["cross"]["spearman"]["score"] == pytest.approx(
            offline["cross_score"], abs=0.02
        )
        assert figures["cross"]["spearman"]["probability"] == pytest.approx(
            offline["cross_probability"], abs=0.02
        )
        assert main([*argv, "--mode", "cross"]) == 0
        assert "probability" in capsys.readouterr().out

        # TEI answers a single input with a flat list, best first; huggingface_hub's
        # text_classification takes its first element (typed as a list, it is one prediction).
        hub = InferenceClient(model=f"{server.url}/predict")
        top = cast(Any, hub.text_classification("the man plays"))
        expected = raw_scores(cross_logits(_core(tiny_cross_bundle), [("the man plays", None)]))
        assert top.label == "LABEL_0"
        assert top.score == pytest.approx(float(sigmoid(expected)[0]), abs=1e-5)
    finally:
        server.stop()


def test_collection_search_reranks_with_the_real_cross_encoder(
    make_client: Callable[..., TestClient], tiny_cross_bundle: Path, tmp_path: Path
) -> None:
    """`rerank` in a collection search rescores the top N with the bundle's ONNX
    cross-encoder: its order and its scores, the rest untouched."""
    client = make_client(Settings(bundle=tiny_cross_bundle, threads=1, data_dir=tmp_path))
    texts = list(dict.fromkeys(sentences(40, seed=21)))[:12]
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]
    put = client.post("/v1/collections/c/documents", json={"documents": docs})
    assert put.status_code == 200, put.text
    query = texts[3]
    body: dict[str, Any] = {"query": query, "k": 8, "mode": "hybrid", "explain": True}
    plain = client.post("/v1/collections/c/search", json=body).json()["results"]
    ranked = client.post(
        "/v1/collections/c/search", json={**body, "rerank": {"candidates": 5}}
    ).json()["results"]
    top = [h["text"] for h in plain[:5]]
    expected = raw_scores(cross_logits(_core(tiny_cross_bundle), [(query, t) for t in top]))
    order = [top[i] for i in np.argsort(-expected, kind="stable")]
    assert [h["text"] for h in ranked[:5]] == order
    assert np.allclose([h["score"] for h in ranked[:5]], sigmoid(np.sort(expected)[::-1]))
    assert [h["sources"]["rerank"]["rank"] for h in ranked[:5]] == [1, 2, 3, 4, 5]
    assert [h["id"] for h in ranked[5:]] == [h["id"] for h in plain[5:]]
