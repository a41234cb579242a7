"""Fine-tuning data: readers, the seeded train/dev cut, and the batch order of an epoch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.finetune_data import (
    PairData,
    both_orders,
    bucketed_batches,
    dev_indices,
    distinct_batches,
    epoch_order,
    is_retrieval,
    plain_batches,
    read_pair_data,
    read_retrieval,
    split_pairs,
)


def write_beir(root: Path, n_docs: int = 12) -> Path:
    """A small BEIR folder: one query per document, judged relevant to it."""
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w") as fh:
        for i in range(n_docs):
            fh.write(json.dumps({"_id": f"d{i}", "title": f"T{i}", "text": f"doc {i}"}) + "\n")
    with open(root / "queries.jsonl", "w") as fh:
        for i in range(n_docs):
            fh.write(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n")
    rows = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(n_docs)]
    (root / "qrels" / "train.tsv").write_text("\n".join(rows) + "\n")
    return root


def test_reads_every_pair_format_onto_one_label_scale(tmp_path: Path) -> None:
    sts = tmp_path / "sts.tsv"
    sts.write_text("score\tsentence1\tsentence2\n5\ta\tb\n0\tc\td\n")
    zh = tmp_path / "zh.txt"
    zh.write_text("1||猫||狗||2.5\n")
    binary = tmp_path / "bin.tsv"
    binary.write_text("x\ty\t1\nu\tv\t0\n")
    data = read_pair_data([sts, zh, binary])
    assert data.kind == "graded"  # graded and binary mix as graded
    assert data.target.tolist() == [1.0, 0.0, 0.5, 1.0, 0.0]
    assert data.gold.tolist() == [5.0, 0.0, 2.5, 1.0, 0.0]
    assert [s["pairs"] for s in data.sources] == [2, 1, 2]
    assert read_pair_data([binary]).kind == "binary"

    two = tmp_path / "pos.tsv"
    two.write_text("what is a cat\ta cat is an animal\nwho sings\ta singer sings\n")
    pos = read_pair_data([two])
    assert pos.kind == "positive" and pos.b == ["a cat is an animal", "a singer sings"]
    with pytest.raises(ValueError, match="cannot be mixed"):
        read_pair_data([two, sts])
    bad = tmp_path / "bad.tsv"
    bad.write_text("one column only\n")
    with pytest.raises(ValueError, match="not a pair file"):
        read_pair_data([bad])


def test_beir_folder_gives_query_document_pairs_and_a_dev_split(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "beir")
    data = read_pair_data([root])
    assert data.kind == "positive" and len(data) == 12
    assert data.a[0] == "query 0" and data.b[0] == "T0 doc 0"  # title before text
    with pytest.raises(ValueError, match=r"qrels/dev\.tsv"):
        read_retrieval(root, "dev")

    cut = split_pairs(root, tmp_path / "cut", dev_share=0.25, seed=3)
    assert cut["queries"] == {"train": 9, "dev": 3}
    dev = read_retrieval(tmp_path / "cut", "dev")
    train = read_pair_data([tmp_path / "cut"])
    assert len(dev.qrels) == 3 and len(train) == 9
    assert not set(dev.qrels) & {f"q{i}" for i in range(12) if f"query {i}" in train.a}
    assert len(dev.corpus) == 12  # dev queries are scored against the whole corpus
    assert is_retrieval(tmp_path / "cut") and is_retrieval(tmp_path / "cut/qrels/dev.tsv")
    assert not is_retrieval(tmp_path / "cut/corpus.jsonl")


def test_the_cut_is_seeded_disjoint_and_keeps_the_format(tmp_path: Path) -> None:
    sts = tmp_path / "sts.tsv"
    rows = [f"{i % 6}\tsentence {i}\tother {i}" for i in range(50)]
    sts.write_text("score\tsentence1\tsentence2\n" + "\n".join(rows) + "\n")
    report = split_pairs(sts, tmp_path / "a", dev_share=0.2, seed=0)
    assert report["pairs"] == {"train": 40, "dev": 10}
    train = (tmp_path / "a/train.tsv").read_text().splitlines()
    dev = (tmp_path / "a/dev.tsv").read_text().splitlines()
    assert train[0] == dev[0] == "score\tsentence1\tsentence2"
    assert sorted(train[1:] + dev[1:]) == sorted(rows)
    expected = [rows[i] for i in np.sort(np.random.default_rng(0).permutation(50)[:10])]
    assert dev[1:] == expected  # the documented rule
    split_pairs(sts, tmp_path / "b", dev_share=0.2, seed=0)
    assert (tmp_path / "b/dev.tsv").read_text() == (tmp_path / "a/dev.tsv").read_text()
    split_pairs(sts, tmp_path / "c", dev_share=0.2, seed=1)
    assert (tmp_path / "c/dev.tsv").read_text() != (tmp_path / "a/dev.tsv").read_text()
    assert len(read_pair_data([tmp_path / "a/dev.tsv"])) == 10
    with pytest.raises(ValueError, match="dev share"):
        dev_indices(10, 1.5, 0)


def test_epoch_orders_differ_by_epoch_and_batches_cover_every_item() -> None:
    assert (epoch_order(100, 0, 0) == epoch_order(100, 0, 0)).all()
    assert not (epoch_order(100, 0, 0) == epoch_order(100, 0, 1)).all()
    order = epoch_order(101, 0, 0)
    plain = plain_batches(order, 10)
    assert [len(b) for b in plain] == [10] * 10  # the last batch of one is dropped
    lengths = np.arange(101) % 17
    buckets = bucketed_batches(order, 10, lengths, 4, np.random.default_rng(0))
    flat = sorted(i for b in buckets for i in b)
    assert len(flat) == len(set(flat)) >= 100
    spread = np.mean([np.ptp(lengths[b]) for b in buckets])
    assert spread < np.mean([np.ptp(lengths[b]) for b in plain])  # similar lengths together


def test_distinct_batches_never_repeat_a_query_or_a_positive() -> None:
    a = ["q1", "q1", "q1", "q2", "q3", "q4", "q5", "q6"]
    b = ["p1", "p2", "p3", "p1", "p4", "p5", "p6", "p7"]
    batches = distinct_batches(np.arange(8), 4, a, b)
    for batch in batches:
        assert len({a[i] for i in batch}) == len(batch) == len({b[i] for i in batch})
    placed = [i for batch in batches for i in batch]
    # Repeats wait for a later batch; only the third "q1" pair is left alone at the end,
    # and a batch of one has no negatives.
    assert batches[0] == [0, 4, 5, 6] and batches[1] == [1, 3, 7]
    assert sorted(placed) == [0, 1, 3, 4, 5, 6, 7]


def test_both_orders_doubles_the_pairs() -> None:
    t = np.array([1.0, 0.0])
    twice = both_orders(PairData("binary", ["a", "c"], ["b", "d"], t, t))
    pairs = list(zip(twice.a, twice.b, strict=True))
    assert pairs == [("a", "b"), ("c", "d"), ("b", "a"), ("d", "c")]
    assert twice.target.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_dev_sets_with_one_file_name_are_told_apart_by_their_folder(tmp_path: Path) -> None:
    from models.finetune_eval import DevSets

    for name in ("ATEC", "BQ"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dev.tsv").write_text("a\tb\t1\nc\td\t0\n")
    sets = DevSets([str(tmp_path / "ATEC/dev.tsv"), str(tmp_path / "BQ/dev.tsv")], "cosent")
    assert [name for name, _ in sets.sets] == ["ATEC/dev.tsv", "BQ/dev.tsv"]
    assert [name for name, _ in DevSets([str(tmp_path / "BQ/dev.tsv")], "cross").sets] == [
        "dev.tsv"
    ]
    with pytest.raises(ValueError, match="bi-encoder"):
        DevSets([str(write_beir(tmp_path / "beir"))], "cross")
