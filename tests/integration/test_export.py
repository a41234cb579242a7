"""Export and pooling, proven against PyTorch on a tiny random BERT built here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.build import BuildOptions, build_bundle
from models.export_onnx import load_checkpoint, pooling_module
from service.runtime.bundle import load_bundle
from service.runtime.encoder import OnnxEncoder, pad_batch
from tests.builders import write_tiny_checkpoint

TEXTS = ["a", "the man plays the guitar in the park today", "red car", "the dog runs quickly"]


def test_bundle_records_parity_for_every_output(tiny_bundle: Path) -> None:
    manifest = load_bundle(tiny_bundle).manifest
    assert set(manifest.parity) == {"cls", "pooler", "mean", "first_last_avg"}
    for figures in manifest.parity.values():
        assert figures.min_cosine >= 0.99999
        assert figures.max_abs_diff < 1e-3


def test_onnx_pooling_equals_masked_pooling_of_hf_hidden_states(
    tiny_bundle: Path, tiny_checkpoint: Path
) -> None:
    bundle = load_bundle(tiny_bundle)
    enc = OnnxEncoder(bundle.model_path, bundle.tokenizer_path, 64)
    tokens = enc.tokenize(TEXTS)
    out = enc.infer(tokens)
    ckpt = load_checkpoint(str(tiny_checkpoint))
    assert not ckpt.model.training
    ids, mask = pad_batch(tokens)
    with torch.no_grad():
        hf = ckpt.model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            output_hidden_states=True,
        )
    hs = [h.numpy() for h in hf.hidden_states]
    m = mask[:, :, None].astype(np.float32)
    expected = {
        "cls": hs[-1][:, 0],
        "pooler": hf.pooler_output.numpy(),
        "mean": (hs[-1] * m).sum(1) / m.sum(1),
        "first_last_avg": ((hs[1] + hs[-1]) / 2 * m).sum(1) / m.sum(1),
    }
    for name, ref in expected.items():
        assert np.allclose(out[name], ref, atol=1e-4), name


def test_padding_does_not_change_a_text_s_vectors(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    enc = OnnxEncoder(bundle.model_path, bundle.tokenizer_path, 64)
    batch = enc.infer(enc.tokenize(TEXTS))
    for i, text in enumerate(TEXTS):
        alone = enc.infer(enc.tokenize([text]))
        for name in enc.outputs:
            assert np.allclose(alone[name][0], batch[name][i], atol=1e-5)


def test_export_wrapper_is_in_eval_mode_so_dropout_is_off(tiny_checkpoint: Path) -> None:
    ckpt = load_checkpoint(str(tiny_checkpoint))
    module = pooling_module(ckpt)
    assert not module.training and not any(m.training for m in module.modules())
    ids = torch.tensor([[2, 10, 11, 3]])
    with torch.no_grad():
        first = module(ids, torch.ones_like(ids), torch.zeros_like(ids))
        second = module(ids, torch.ones_like(ids), torch.zeros_like(ids))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_checkpoint_without_pooler_falls_back_to_cls(
    tmp_path: Path, tiny_data: dict[str, Path]
) -> None:
    ckpt = write_tiny_checkpoint(tmp_path / "nopool", pooler=False)
    out = tmp_path / "bundle"
    manifest = build_bundle(
        BuildOptions(model=str(ckpt), out=out, pooling="cls", max_length=32), say=lambda _m: None
    )
    assert manifest.source.pooler == "cls"
    assert not manifest.whitening.fitted and manifest.head is None
    bundle = load_bundle(out)
    enc = OnnxEncoder(bundle.model_path, bundle.tokenizer_path, 32)
    vec = enc.infer(enc.tokenize(TEXTS))
    assert np.allclose(vec["pooler"], vec["cls"])


def test_model_without_token_type_ids_exports(tmp_path: Path) -> None:
    from transformers import DistilBertConfig, DistilBertModel

    src = write_tiny_checkpoint(tmp_path / "tok")
    ckpt_dir = tmp_path / "distil"
    shutil.copytree(src, ckpt_dir)
    for f in ("model.safetensors", "config.json"):
        (ckpt_dir / f).unlink()
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(src)))
    torch.manual_seed(0)
    DistilBertModel(
        DistilBertConfig(
            vocab_size=vocab,
            dim=32,
            n_layers=2,
            n_heads=4,
            hidden_dim=64,
            max_position_embeddings=64,
        )
    ).save_pretrained(str(ckpt_dir))
    manifest = build_bundle(
        BuildOptions(model=str(ckpt_dir), out=tmp_path / "b", pooling="mean", max_length=32),
        say=lambda _m: None,
    )
    assert manifest.inputs == ["input_ids", "attention_mask"]
    assert manifest.source.pooler == "cls"
    assert min(p.min_cosine for p in manifest.parity.values()) >= 0.99999


def test_sentence_transformers_checkpoint_declares_pooling_and_length(
    tmp_path: Path, shared: Path
) -> None:
    """all-MiniLM-L6-v2's real config and tokenizer with random weights: pooling 'auto' reads
    its 1_Pooling config (mean) and sentence_bert_config max length (256)."""
    from transformers import AutoConfig, BertModel

    src = shared / "models" / "configs-only" / "all-MiniLM-L6-v2"
    ckpt_dir = tmp_path / "minilm"
    shutil.copytree(src, ckpt_dir)
    torch.manual_seed(0)
    BertModel(AutoConfig.from_pretrained(str(src))).save_pretrained(str(ckpt_dir))
    manifest = build_bundle(
        BuildOptions(model=str(ckpt_dir), out=tmp_path / "b"), say=lambda _m: None
    )
    assert manifest.pooling == "mean"
    assert (
        manifest.max_length
        == json.loads((src / "sentence_bert_config.json").read_text())["max_seq_length"]
    )
    assert manifest.dims.hidden == 384


def test_build_refuses_to_overwrite_without_force(tiny_bundle: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(FileExistsError):
        build_bundle(BuildOptions(model=str(tiny_checkpoint), out=tiny_bundle), say=lambda _m: None)
    assert load_bundle(tiny_bundle).head is not None


def test_fused_graph_keeps_parity(tiny_bundle: Path) -> None:
    manifest = load_bundle(tiny_bundle).manifest
    assert manifest.fusions.get("Attention") == 2  # one per layer
    assert manifest.fusions.get("SkipLayerNormalization", 0) >= 2
    assert min(p.min_cosine for p in manifest.parity.values()) >= 0.99999


@pytest.mark.parametrize("kind", ["int8", "int8-channel"])
def test_int8_build_records_its_accuracy_cost(
    tmp_path: Path, tiny_checkpoint: Path, tiny_data: dict[str, Path], kind: str
) -> None:
    import onnx

    out = tmp_path / "int8"
    manifest = build_bundle(
        BuildOptions(
            model=str(tiny_checkpoint),
            out=out,
            pooling="mean",
            max_length=64,
            whiten_on=[tiny_data["corpus"]],
            eval_on=[tiny_data["dev"]],
            quantize=kind,
            threads=1,
        ),
        say=lambda _m: None,
    )
    q = manifest.quantization
    assert q is not None and "int8" in q.method
    assert ("per channel" in q.method) == (kind == "int8-channel")
    assert set(q.min_cosine_vs_fp32) == {"cls", "pooler", "mean", "first_last_avg"}
    assert all(0.9 < c <= 1.0 for c in q.min_cosine_vs_fp32.values())
    figures = q.spearman["dev.tsv"]
    assert set(figures) == {"fp32", "int8"}
    assert figures["int8"] == manifest.evaluation["dev.tsv"]["spearman"]
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"QAttention", "DynamicQuantizeLinear"} & ops, ops
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    load_bundle(out)


def test_no_optimize_serves_the_plain_export(tmp_path: Path, tiny_checkpoint: Path) -> None:
    manifest = build_bundle(
        BuildOptions(
            model=str(tiny_checkpoint),
            out=tmp_path / "plain",
            pooling="mean",
            max_length=32,
            optimize=False,
        ),
        say=lambda _m: None,
    )
    assert manifest.fusions == {}
    assert min(p.min_cosine for p in manifest.parity.values()) >= 0.99999
