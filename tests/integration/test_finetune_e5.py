"""Fine-tuning an e5-like checkpoint (tokenizer.json only, XLM-R specials and pair template,
one token type, query/passage prompts), on a tiny random one: bi-encoders train and are
scored on prompted text, outputs keep the base's tokenizer.json and prompts, and a
cross-encoder starts from the bi-encoder base and exports with the tokenizer's own pair
template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import models.finetune_eval as finetune_eval
import models.finetune_objective as finetune_objective
from models.build_cross import CrossOptions, build_cross
from models.finetune import finetune
from models.finetune_config import FinetuneOptions
from models.finetune_models import model_inputs
from tests.builders import write_sts_file, write_tiny_unigram_checkpoint

PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_unigram_checkpoint(
        tmp_path_factory.mktemp("e5-like") / "e5-like", seed=0, prompts=PROMPTS
    )


@pytest.fixture(scope="module")
def sts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e5-sts")
    return {
        "train": write_sts_file(root / "train.tsv", 64, seed=2),
        "dev": write_sts_file(root / "dev.tsv", 24, seed=3),
    }


def _record(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, seen: list[str]) -> None:
    """Wrap a module's tokenizing/encoding function to record the texts it is given."""
    original = getattr(module, name)

    def wrapped(net: Any, tokenizer: Any, texts: Any, *rest: Any, **kw: Any) -> Any:
        seen.extend(texts)
        return original(net, tokenizer, texts, *rest, **kw)

    def wrapped_tokenize(tokenizer: Any, a: list[str], b: Any, *rest: Any) -> Any:
        seen.extend(a)
        return original(tokenizer, a, b, *rest)

    monkeypatch.setattr(module, name, wrapped_tokenize if name == "tokenize" else wrapped)


def _cosent(base: Path, sts: dict[str, Path], out: Path, **extra: Any) -> dict[str, Any]:
    opts = FinetuneOptions(
        model=str(base),
        pairs=[sts["train"]],
        dev=[sts["dev"]],
        out=out,
        objective="cosent",
        epochs=1,
        batch_size=16,
        max_length=32,
        progress=False,
        device="cpu",
        **extra,
    )
    return finetune(opts, say=lambda _m: None)


def test_bi_encoder_trains_and_is_scored_on_text_with_the_query_prompt(
    base: Path, sts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev_texts: list[str] = []
    train_texts: list[str] = []
    _record(monkeypatch, finetune_eval, "encode_texts", dev_texts)
    _record(monkeypatch, finetune_objective, "tokenize", train_texts)
    out = tmp_path / "bi"
    card = _cosent(base, sts, out)
    assert dev_texts and all(t.startswith("query: ") for t in dev_texts)
    assert train_texts and all(t.startswith("query: ") for t in train_texts)
    assert card["prompts"] == {"query": "query: ", "document": "passage: "}
    # The output keeps the base's own tokenizer.json and its prompts, beside the
    # sentence-transformers files.
    assert (out / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    st = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st["prompts"] == PROMPTS
    assert (out / "modules.json").is_file() and (out / "1_Pooling" / "config.json").is_file()


def test_no_prompt_trains_on_raw_text(
    base: Path, sts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev_texts: list[str] = []
    _record(monkeypatch, finetune_eval, "encode_texts", dev_texts)
    card = _cosent(base, sts, tmp_path / "raw", no_prompt=True)
    assert dev_texts and not any(t.startswith("query: ") for t in dev_texts)
    assert card["prompts"] == {"query": "", "document": ""}


def test_an_unknown_prompt_name_is_refused(
    base: Path, sts: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="no such prompt"):
        _cosent(base, sts, tmp_path / "x", prompt_name="instruction")


def test_cross_encoder_from_the_bi_encoder_base_uses_the_pair_template(
    base: Path, sts: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "cross"
    card = finetune(
        FinetuneOptions(
            model=str(base),
            pairs=[sts["train"]],
            dev=[sts["dev"]],
            out=out,
            objective="cross",
            epochs=1,
            batch_size=16,
            max_length=32,
            progress=False,
            device="cpu",
        ),
        say=lambda _m: None,
    )
    assert card["kind"] == "cross-encoder" and card["prompts"] == {"query": "", "document": ""}
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["type_vocab_size"] == 1
    assert (out / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    assert not (out / "config_sentence_transformers.json").exists()
    # The served tokenizer (the checkpoint's tokenizer.json) gives the ids the model was
    # trained on, pair template included, and the graph matches PyTorch.
    work = tmp_path / "work"
    work.mkdir()
    built = build_cross(CrossOptions(model=str(out), threads=1), work, lambda _m: None)
    assert built.info.parity.tokenizer_match
    assert built.info.parity.max_abs_diff <= 1e-4
    assert built.info.segment_ids is False


def test_one_token_type_models_get_no_token_type_ids() -> None:
    class Net:
        def __init__(self, types: int) -> None:
            self.config = type("C", (), {"type_vocab_size": types})()

    batch = {"input_ids": 1, "attention_mask": 2, "token_type_ids": 3}
    assert set(model_inputs(Net(1), batch)) == {"input_ids", "attention_mask"}
    assert model_inputs(Net(2), batch) == batch


def test_training_tokenizes_with_the_checkpoint_s_own_tokenizer_json(base: Path) -> None:
    from tokenizers import Tokenizer

    from models.checkpoint_files import training_tokenizer

    served = Tokenizer.from_file(str(base / "tokenizer.json"))
    tok = training_tokenizer(str(base))
    texts = ["ｔｈｅ ｍａｎ　ｐｌａｙｓ", "他说：“你好！”", "the man plays"]
    for text in texts:
        assert tok(text)["input_ids"] == served.encode(text).ids
    pair = tok(texts[0], texts[2])["input_ids"]
    assert pair == served.encode(texts[0], texts[2]).ids  # the file's pair template
