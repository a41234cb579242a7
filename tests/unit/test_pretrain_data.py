"""Pretraining data rules: masking, NSP pairs, corpus reading, replayable streams (no torch)."""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from models.pretrain_data import (
    IGNORE,
    Doc,
    Instance,
    InstanceCursor,
    TokenInfo,
    collate,
    is_heldout,
    iter_documents,
    iter_instances,
    mask_batch,
    mask_tokens,
    stream_instances,
    truncate_pair,
)

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
VOCAB = 50_000


def word_starts(size: int) -> npt.NDArray[np.bool_]:
    word_start = np.ones(size, dtype=np.bool_)
    word_start[1::3] = False  # every third id is a '##' continuation piece
    return word_start


def vocab(size: int = VOCAB) -> TokenInfo:
    special = np.array([PAD, UNK, CLS, SEP, MASK], dtype=np.int64)
    return TokenInfo(
        cls_id=CLS,
        sep_id=SEP,
        pad_id=PAD,
        mask_id=MASK,
        special_ids=special,
        random_ids=np.setdiff1d(np.arange(size), special),
        word_start=word_starts(size),
    )


def random_instances(n: int, seed: int) -> list[Instance]:
    rng = random.Random(seed)

    def span() -> list[int]:
        return [rng.randrange(5, VOCAB) for _ in range(rng.randint(1, 60))]

    return [Instance(span(), span(), rng.random() < 0.5) for _ in range(n)]


def test_masking_rule_on_a_large_sample() -> None:
    tokens = vocab()
    batch = collate(random_instances(4000, seed=1), tokens)
    rng = np.random.default_rng(7)
    masked = mask_batch(batch, tokens, rng)
    chosen = masked.labels != IGNORE
    maskable = int(batch.maskable.sum())
    assert maskable > 200_000
    assert abs(chosen.sum() / maskable - 0.15) < 0.005
    original = batch.input_ids[chosen]
    after = masked.input_ids[chosen]
    assert (masked.labels[chosen] == original).all()
    as_mask = (after == MASK).mean()
    kept = (after == original).mean()
    replaced = ((after != MASK) & (after != original)).mean()
    assert abs(as_mask - 0.8) < 0.01 and abs(replaced - 0.1) < 0.01 and abs(kept - 0.1) < 0.01
    # Positions that were not chosen are untouched, and replacements are never special.
    assert (masked.input_ids[~chosen] == batch.input_ids[~chosen]).all()
    assert not np.isin(after[after != MASK], tokens.special_ids).any()


def test_short_rows_get_the_rate_in_expectation() -> None:
    # Three maskable tokens: BERT's round(3 * 0.15) = 0 would never mask them.
    ids = np.tile(np.array([[CLS, 10, 11, 12, SEP]]), (20_000, 1))
    maskable = np.isin(ids, [10, 11, 12])
    _, labels = mask_tokens(ids, maskable, np.random.default_rng(3), MASK, np.arange(5, 99))
    assert abs((labels != IGNORE).sum(axis=1).mean() - 0.45) < 0.02


def test_special_tokens_and_padding_are_never_chosen() -> None:
    tokens = vocab()
    rng = random.Random(4)
    instances = [
        # Text that tokenized to special ids ([UNK], a literal [MASK]) stays unchosen too.
        Instance(
            [rng.choice([UNK, MASK, 7, 8, 9]) for _ in range(rng.randint(1, 20))],
            [5, UNK],
            i % 2 == 0,
        )
        for i in range(3000)
    ]
    batch = collate(instances, tokens)
    assert (batch.attention_mask == 0).any(), "the sample must contain padding"
    special = np.isin(batch.input_ids, tokens.special_ids) | (batch.attention_mask == 0)
    for seed in range(5):
        masked = mask_batch(batch, tokens, np.random.default_rng(seed))
        assert not (masked.labels[special] != IGNORE).any()
        assert (masked.input_ids[special] == batch.input_ids[special]).all()
        assert (masked.labels != IGNORE).any()


def test_collate_builds_cls_a_sep_b_sep_with_segment_ids() -> None:
    tokens = vocab()
    batch = collate([Instance([10, 11], [12], False), Instance([20], [21, 22, 23], True)], tokens)
    assert batch.input_ids.tolist() == [
        [CLS, 10, 11, SEP, 12, SEP, PAD],
        [CLS, 20, SEP, 21, 22, 23, SEP],
    ]
    assert batch.token_type_ids.tolist() == [[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1, 0], [1] * 7]
    assert batch.next_sentence_label.tolist() == [0, 1]


def numbered_docs(n: int, seed: int, one_paragraph: bool = False) -> list[Doc]:
    """Documents whose token ids say where they come from: doc d owns ids d*1000+5 upward."""
    rng = random.Random(seed)
    docs = []
    for d in range(n):
        next_id = d * 1000 + 5
        doc = []
        for _ in range(1 if one_paragraph else rng.randint(1, 8)):
            length = rng.randint(3, 25) if one_paragraph else rng.randint(5, 90)
            doc.append(list(range(next_id, next_id + length)))
            next_id += length
        docs.append(doc)
    return docs


@pytest.mark.parametrize("one_paragraph", [False, True], ids=["paragraphs", "sentences"])
def test_half_the_pairs_are_true_continuations(one_paragraph: bool) -> None:
    docs = numbered_docs(10_000, seed=5, one_paragraph=one_paragraph)
    pools = [docs[i : i + 400] for i in range(0, len(docs), 400)]
    word_start = word_starts(10_000 * 1000)
    instances = list(iter_instances(pools, 64, word_start, random.Random(6)))
    assert len(instances) >= 10_000
    share = np.mean([x.is_random_next for x in instances])
    assert abs(share - 0.5) < 0.02
    for x in instances:
        assert x.tokens_a and x.tokens_b
        assert len(x.tokens_a) + len(x.tokens_b) <= 64 - 3
        doc_a = {t // 1000 for t in x.tokens_a}
        doc_b = {t // 1000 for t in x.tokens_b}
        assert len(doc_a) == 1 and len(doc_b) == 1
        if x.is_random_next:
            assert doc_a != doc_b
        else:
            # B is the text right after A in the same document (truncation trims the ends).
            assert doc_a == doc_b and max(x.tokens_a) < min(x.tokens_b)
    # The random B is shaped like the true one, so its length does not give the label away.
    true_len = np.mean([len(x.tokens_b) for x in instances if not x.is_random_next])
    random_len = np.mean([len(x.tokens_b) for x in instances if x.is_random_next])
    assert abs(random_len / true_len - 1) < 0.1


def test_cuts_inside_a_paragraph_fall_on_word_starts() -> None:
    docs = numbered_docs(500, seed=8, one_paragraph=True)
    word_start = word_starts(500 * 1000)
    for x in iter_instances([docs], 128, word_start, random.Random(9)):
        if not x.is_random_next:
            assert word_start[x.tokens_b[0]]


def test_truncation_takes_from_the_longer_side() -> None:
    a, b = truncate_pair(list(range(100)), list(range(100, 110)), 50, random.Random(0))
    assert len(a) + len(b) == 50 and len(b) == 10
    a, b = truncate_pair(list(range(30)), list(range(30, 60)), 20, random.Random(0))
    assert len(a) == len(b) == 10
    assert a == list(range(a[0], a[0] + 10)) and b == list(range(b[0], b[0] + 10))


def test_a_single_document_cannot_make_pairs() -> None:
    with pytest.raises(ValueError, match="at least two documents"):
        list(iter_instances([[[[5, 6, 7, 8]]]], 32, word_starts(100), random.Random(0)))


def test_documents_from_compressed_text_and_pair_files(tmp_path: Path) -> None:
    text = tmp_path / "c.txt.gz"
    with gzip.open(text, "wt", encoding="utf-8") as fh:
        fh.write("p1 of d1\np2 of d1\n\n\np1 of d2\n\nonly d3\n")
    sts = tmp_path / "sts.tsv"
    sts.write_text("score\tsentence1\tsentence2\n1\tx y\tz\n2\tz\tw\n")
    assert list(iter_documents([text, sts])) == [
        ["p1 of d1", "p2 of d1"],
        ["p1 of d2"],
        ["only d3"],
        ["x y"],
        ["z"],
        ["w"],
    ]


def test_heldout_split_is_disjoint_and_evenly_spread() -> None:
    held = [i for i in range(10_000) if is_heldout(i, 0.02)]
    assert len(held) == 200
    assert max(np.diff(held)) == min(np.diff(held)) == 50
    assert not any(is_heldout(i, 0.0) for i in range(1000))


def encode_words(texts: list[str]) -> list[list[int]]:
    """'w17 w18' -> [22, 23]: each word its own id."""
    return [[5 + int(w[1:]) for w in t.split()] for t in texts]


def test_streams_replay_and_cursors_resume_across_epochs(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    rng = random.Random(0)
    docs = []
    for d in range(60):  # document d uses the words w{100 d} .. w{100 d + 99}
        paragraphs = [
            " ".join(f"w{100 * d + rng.randrange(100)}" for _ in range(rng.randint(4, 30)))
            for _ in range(rng.randint(1, 4))
        ]
        docs.append("\n".join(paragraphs))
    corpus.write_text("\n\n".join(docs) + "\n")
    word_start = word_starts(7000)

    def make(epoch: int, part: str = "train") -> Iterator[Instance]:
        return stream_instances(
            [corpus],
            encode_words,
            word_start,
            32,
            seed=3,
            epoch=epoch,
            part=part,
            heldout=0.1,
            pool_chars=500,
        )

    def source_docs(instances: list[Instance]) -> set[int]:
        return {(t - 5) // 100 for x in instances for t in x.tokens_a}

    first = list(make(0))
    assert first == list(make(0))
    assert first != list(make(1))
    heldout = list(make(0, "heldout"))
    assert source_docs(heldout) == {d for d in range(60) if is_heldout(d, 0.1)}
    assert not source_docs(heldout) & source_docs(first)

    straight = InstanceCursor(make)
    taken = straight.take(len(first) + 25)  # runs into the second epoch
    assert taken[: len(first)] == first and straight.epoch == 1
    for stop in (7, len(first), len(first) + 3):
        head = InstanceCursor(make)
        head.take(stop)
        resumed = InstanceCursor(make, head.epoch, head.consumed)
        assert resumed.take(len(first) + 25 - stop) == taken[stop:]
