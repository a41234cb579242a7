"""What the build fits on: seeded samples, several pair files as one head set, and the
encoder cache that runs each distinct text once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.build_fit import CachedEncoder, HeadData, fit_texts, sample_pairs
from models.datasets import read_pairs
from service.runtime.encoder import encode_texts
from tests.builders import write_sts_file
from tests.fakes import FakeEncoder


def test_sample_is_seeded_in_file_order_and_shared_by_whitening_and_head(
    tmp_path: Path,
) -> None:
    path = write_sts_file(tmp_path / "train.tsv", 200, seed=1)
    pairs = read_pairs(path)
    a, b = sample_pairs(pairs, 50), sample_pairs(pairs, 50)
    assert a.pairs == b.pairs and len(a.pairs) == 50
    order = [pairs.pairs.index(p) for p in a.pairs]
    assert order == sorted(order)
    assert sample_pairs(pairs, 50, seed=1).pairs != a.pairs
    assert sample_pairs(pairs, None) is pairs and sample_pairs(pairs, 500) is pairs
    # the whitening of a sampled pair file reads exactly the head's sentences
    assert list(fit_texts(path, 50)) == HeadData.read([path], 50).sentences()
    lines = tmp_path / "corpus.txt"
    lines.write_text("\n".join(f"text {i}" for i in range(100)) + "\n")
    kept = list(fit_texts(lines, 10))
    assert len(kept) == 10 == len(set(kept)) and kept == list(fit_texts(lines, 10))
    assert len(list(fit_texts(lines, None))) == 100


def test_head_data_joins_files_each_on_its_own_scale(tmp_path: Path) -> None:
    en = write_sts_file(tmp_path / "en.tsv", 30, seed=1)
    zh = tmp_path / "zh.txt"
    zh.write_text("a||甲乙||甲丙||5\nb||甲乙||丁||0\nc||丙||丁||2.5\n")
    data = HeadData.read([en, zh])
    assert data.count == 33 and data.names == "en.tsv, zh.txt"
    targets = data.targets()
    assert targets.min() >= 0.0 and targets.max() <= 1.0
    assert list(targets[-3:]) == [1.0, 0.0, 0.5]
    sentences = data.sentences()
    assert len(sentences) == len(set(sentences))
    ia, ib = data.indices({s: i for i, s in enumerate(sentences)})
    assert sentences[ia[-3]] == "甲乙" and sentences[ib[-1]] == "丁"


def test_cached_encoder_runs_each_distinct_text_once_with_the_same_vectors() -> None:
    core = FakeEncoder(dims=8)
    cached = CachedEncoder(core)
    texts = ["a cat", "a dog", "a cat", "the bird sings"]
    first = encode_texts(cached, texts)
    assert cached.runs == 3 and cached.reused == 1
    again = encode_texts(cached, ["the bird sings", "a dog"])
    assert cached.runs == 3 and cached.reused == 3
    direct = encode_texts(core, texts)
    for name in core.outputs:
        np.testing.assert_array_equal(first[name], direct[name])
        np.testing.assert_array_equal(again[name], direct[name][[3, 1]])
