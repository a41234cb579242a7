"""Bundles from checkpoints that ship only tokenizer.json: a tiny random BERT over a tiny
SentencePiece-style Unigram tokenizer with XLM-R's specials (<s> 0, <pad> 1, </s> 2), one
token type, and sentence-transformers prompts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from tokenizers import Tokenizer

from models.build import BuildOptions, build_bundle
from models.datasets import read_texts
from models.evaluate import bundle_cross_encoder, bundle_encoder
from service.runtime.bundle import Bundle, load_bundle
from service.runtime.encoder import OnnxEncoder, encode_texts, pad_batch
from service.runtime.prompts import PromptedEncoder
from service.settings import Settings
from tests.builders import write_tiny_unigram_checkpoint

PROMPTS = {"query": "query: ", "passage": "passage: "}
TEXTS = ["a", "the man plays the guitar in the park today", "一个男人在弹吉他", "red car"]


@pytest.fixture(scope="module")
def unigram_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("unigram")
    bi = write_tiny_unigram_checkpoint(root / "bi", seed=0, prompts=PROMPTS)
    cross = write_tiny_unigram_checkpoint(root / "cross", seed=1, num_labels=1)
    return bi, cross


@pytest.fixture(scope="module")
def unigram_bundle(
    tmp_path_factory: pytest.TempPathFactory,
    unigram_checkpoints: tuple[Path, Path],
    tiny_data: dict[str, Path],
) -> Bundle:
    bi, cross = unigram_checkpoints
    out = tmp_path_factory.mktemp("unigram-bundle") / "bundle"
    build_bundle(
        BuildOptions(
            model=str(bi),
            out=out,
            pooling="mean",
            whiten_on=[tiny_data["corpus"]],
            head_pairs=tiny_data["train"],
            max_length=32,
            eval_on=[tiny_data["dev"]],
            threads=1,
            cross_model=str(cross),
            cross_calibrate_on=tiny_data["train"],
            cross_max_length=24,
        ),
        say=lambda _m: None,
    )
    return load_bundle(out)


def test_the_checkpoint_has_no_vocab_txt_and_the_manifest_says_unigram(
    unigram_checkpoints: tuple[Path, Path], unigram_bundle: Bundle
) -> None:
    assert not (unigram_checkpoints[0] / "vocab.txt").exists()
    m = unigram_bundle.manifest
    assert m.tokenizer is not None
    assert (m.tokenizer.model, m.tokenizer.source) == ("Unigram", "checkpoint")
    assert m.pad_id == 1
    assert m.parity["mean"].max_abs_diff <= 1e-4
    assert m.cross is not None and m.cross.pad_id == 1


def test_the_bundle_tokenizer_is_the_checkpoint_s_and_pads_with_its_pad_id(
    unigram_checkpoints: tuple[Path, Path], unigram_bundle: Bundle
) -> None:
    m = unigram_bundle.manifest
    enc = OnnxEncoder(unigram_bundle.model_path, unigram_bundle.tokenizer_path, 32, m.pad_id)
    shipped = Tokenizer.from_file(str(unigram_checkpoints[0] / "tokenizer.json"))
    tokens = enc.tokenize(TEXTS)
    for text, tok in zip(TEXTS, tokens, strict=True):
        assert list(tok.ids) == shipped.encode(text).ids
        assert tok.ids[0] == 0 and tok.ids[-1] == 2
    ids, mask = pad_batch(tokens, m.pad_id)
    assert set(ids[mask == 0].tolist()) == {1}
    batch = enc.infer(tokens)
    for i, text in enumerate(TEXTS):
        alone = enc.infer(enc.tokenize([text]))
        assert np.allclose(alone["mean"][0], batch["mean"][i], atol=1e-5)
    (long,) = enc.tokenize([" ".join(TEXTS * 10)])
    assert long.truncated and len(long) == 32 and long.ids[-1] == 2


def test_prompts_are_recorded_and_whitening_is_fitted_on_query_prompted_text(
    unigram_bundle: Bundle, tiny_data: dict[str, Path]
) -> None:
    m = unigram_bundle.manifest
    assert m.prompts == PROMPTS
    assert (m.default_prompt_name, m.query_prompt_name, m.document_prompt_name) == (
        "query",
        "query",
        "passage",
    )
    core = OnnxEncoder(unigram_bundle.model_path, unigram_bundle.tokenizer_path, 32, m.pad_id)
    corpus = list(read_texts(tiny_data["corpus"]))
    prompted = encode_texts(PromptedEncoder(core, "query: "), corpus)["mean"].mean(0)
    bare = encode_texts(core, corpus)["mean"].mean(0)
    mu = unigram_bundle.whitening.mu
    assert mu is not None
    assert np.allclose(mu, prompted, atol=1e-5)
    assert not np.allclose(mu, bare, atol=1e-3)
    # The evaluation reads text as pairs are served: with the query prompt.
    evaluator = bundle_encoder(unigram_bundle, threads=1)
    assert list(evaluator.tokenize(["red car"])[0].ids) == list(
        core.tokenize(["query: red car"])[0].ids
    )


def test_the_cross_encoder_uses_the_tokenizer_s_xlmr_pair_template(
    unigram_bundle: Bundle,
) -> None:
    m = unigram_bundle.manifest
    assert m.cross is not None
    assert m.cross.parity.tokenizer_match and m.cross.parity.max_abs_diff <= 1e-4
    assert not m.cross.segment_ids  # one token type: none fed beyond zeros
    core = bundle_cross_encoder(unigram_bundle, threads=1)
    assert core is not None
    (tok,) = core.tokenize_pairs([("red car", "a dog")])
    ids = list(tok.ids)
    sep = ids.index(2)
    assert ids[0] == 0 and ids[sep + 1] == 2 and ids[-1] == 2  # <s> a </s></s> b </s>
    assert tok.type_ids is None
    (long,) = core.tokenize_pairs([(" ".join(TEXTS * 5), "a dog")])
    assert long.truncated and len(long) == 24 and long.ids[-1] == 2


def test_the_server_reads_texts_with_the_bundle_s_prompts(
    make_client: Callable[..., TestClient], unigram_bundle: Bundle, tmp_path: Path
) -> None:
    """Through the real ONNX bundle: /embed's default prompt, a named one, and a collection
    that stores documents with the passage prompt and searches with the query prompt."""
    m = unigram_bundle.manifest
    core = OnnxEncoder(unigram_bundle.model_path, unigram_bundle.tokenizer_path, 32, m.pad_id)

    def served(texts: list[str]) -> np.ndarray:
        return unigram_bundle.whitening.apply(encode_texts(core, texts)["mean"])

    settings = Settings(bundle=unigram_bundle.directory, threads=1, data_dir=tmp_path / "data")
    client = make_client(settings)
    info = client.get("/info").json()["prompts"]
    assert (info["prompts"], info["default"], info["document"]) == (PROMPTS, "query", "passage")
    got = np.asarray(client.post("/embed", json={"inputs": "x"}).json()[0])
    assert np.allclose(got, served(["query: x"])[0], atol=1e-5)
    assert not np.allclose(got, served(["x"])[0], atol=1e-3)
    named = client.post("/embed", json={"inputs": "x", "prompt_name": "passage"}).json()[0]
    assert np.allclose(named, served(["passage: x"])[0], atol=1e-5)

    docs = ["the man plays the guitar in the park today", "一个男人在弹吉他"]
    body = {"documents": [{"id": str(i), "text": t} for i, t in enumerate(docs)]}
    assert client.post("/v1/collections/c/documents", json=body).status_code == 200
    search = {"query": "red car", "k": 2, "mode": "dense"}
    hits = client.post("/v1/collections/c/search", json=search).json()["results"]
    query = served(["query: red car"])[0]
    stored = served([f"passage: {t}" for t in docs])
    for hit in hits:
        assert hit["score"] == pytest.approx(float(stored[int(hit["id"])] @ query), abs=1e-5)
    unprompted = served(docs) @ query
    assert not np.allclose(stored @ query, unprompted, atol=1e-3)
