"""The real multilingual-e5-small (XLM-R SentencePiece vocabulary, tokenizer.json only) from
../shared: its ONNX export against PyTorch on padded batches of English and Chinese.

Slow: loading and exporting the 12-layer model takes about 25 s on 2 cores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.export_onnx import LoadedCheckpoint, export_onnx, load_checkpoint
from service.runtime.encoder import OnnxEncoder, pad_batch
from service.runtime.prompts import PromptedEncoder

E5 = "multilingual-e5-small-enzh"
TEXTS = [
    "A man is playing a guitar.",
    "一架飞机正在起飞。",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch "
    "and the children run down the lane towards the river.",
    "猫",
    "他说：“你好，世界！”　全角ＡＢＣ",
    "Mixed 中英文 text with numbers 1234.",
    " ".join(["一个很长的句子，用来检查截断。"] * 30),
    "ok",
]


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def e5_export(
    shared: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LoadedCheckpoint, Path]:
    model = shared / "models" / E5
    if not model.is_dir():
        pytest.skip(f"{model} missing")
    ckpt = load_checkpoint(str(model))
    out = tmp_path_factory.mktemp("e5")
    export_onnx(ckpt, out)
    return ckpt, out


def test_e5_onnx_mean_equals_pytorch_on_padded_mixed_batches(
    e5_export: tuple[LoadedCheckpoint, Path],
) -> None:
    ckpt, out = e5_export
    assert not (out / "vocab.txt").exists()
    assert ckpt.pad_id == 1 and ckpt.tokenizer_source == "checkpoint"
    core = OnnxEncoder(out / "model.onnx", out / "tokenizer.json", 128, pad_id=1, threads=1)
    encoder = PromptedEncoder(core, "query: ")
    tokens = encoder.tokenize(TEXTS)
    assert all(t.ids[0] == 0 and t.ids[-1] == 2 for t in tokens)
    assert tokens[6].truncated and len(tokens[6]) == 128
    model = ckpt.model
    assert not model.training
    for rows in ([0, 1, 2, 3], [4, 5, 6, 7], [3, 6]):
        batch = [tokens[i] for i in rows]
        assert len({len(t) for t in batch}) > 1  # padding exercised
        got = encoder.infer(batch)["mean"]
        ids, mask = pad_batch(batch, 1)
        assert (ids[mask == 0] == 1).all()
        with torch.no_grad():
            hidden = model(
                input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
            ).last_hidden_state.numpy()
        m = mask[:, :, None].astype(np.float32)
        ref = (hidden * m).sum(1) / m.sum(1)
        assert float(np.abs(got - ref).max()) <= 1e-4


def test_e5_bundle_tokenizer_is_the_shipped_one_not_transformers_rebuild(
    e5_export: tuple[LoadedCheckpoint, Path], shared: Path
) -> None:
    from tokenizers import Tokenizer

    _, out = e5_export
    shipped = Tokenizer.from_file(str(shared / "models" / E5 / "tokenizer.json"))
    bundled = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert bundled.padding is None and bundled.truncation is None
    for text in TEXTS[:6]:
        assert bundled.encode(text).ids == shipped.encode(text).ids
    # NFKC: full-width letters read as their ASCII forms, as SentencePiece's nmt_nfkc reads them.
    assert bundled.encode("ＡＢＣ").ids == shipped.encode("ABC").ids
    pair = bundled.encode("a", "b")
    assert pair.ids[0] == 0 and pair.ids.count(2) == 3 and set(pair.type_ids) == {0}
