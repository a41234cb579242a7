"""`simsvc finetune --objective rerank` on a tiny BEIR folder: negatives are the hybrid
retriever's top-ranked non-relevant documents, the reranker trains and is scored by nDCG@10
of reranking the retriever's candidates, and its checkpoint is a one-logit classifier."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.finetune import finetune
from models.finetune_config import FinetuneOptions, resolve_config
from models.finetune_rerank import rerank_training_data
from models.negatives import HybridRetriever, mine_negatives
from tests.builders import WORDS, sentences, write_tiny_checkpoint


def write_beir_folder(root: Path, n_docs: int = 40, seed: int = 0) -> Path:
    """Documents over the tiny vocabulary; each query is four words of one document, judged
    relevant to it; a quarter of the queries are dev."""
    rng = random.Random(seed)
    (root / "qrels").mkdir(parents=True)
    docs = sentences(n_docs, seed)
    with open(root / "corpus.jsonl", "w") as fh:
        for i, text in enumerate(docs):
            fh.write(json.dumps({"_id": f"d{i}", "title": "", "text": text}) + "\n")
    with open(root / "queries.jsonl", "w") as fh:
        for i, text in enumerate(docs):
            words = text.split()
            query = " ".join([*rng.sample(words, min(4, len(words))), rng.choice(WORDS)])
            fh.write(json.dumps({"_id": f"q{i}", "text": query}) + "\n")
    header = "query-id\tcorpus-id\tscore"
    dev = {i for i in range(n_docs) if i % 4 == 0}
    for name, rows in (("train", set(range(n_docs)) - dev), ("dev", dev)):
        lines = [header] + [f"q{i}\td{i}\t1" for i in sorted(rows)]
        (root / "qrels" / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_beir_folder(tmp_path_factory.mktemp("beir") / "toy")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("rerank-base"), seed=3)


def test_mined_negatives_are_top_ranked_and_not_relevant() -> None:
    corpus = {
        "a": "the cat sat on the mat",
        "b": "a cat and a dog",
        "c": "the dog ran home",
        "d": "birds fly south",
    }
    ranked = HybridRetriever.build(corpus, None).rank(["cat on a mat"], 3)[0]
    assert ranked[:2] == ["a", "b"] and "d" not in ranked  # BM25 alone: no term, no hit
    rng = np.random.default_rng(0)
    assert mine_negatives(ranked, {"a"}, 1, 2, rng) == ["b"]
    assert mine_negatives(ranked, {"a"}, 5, 3, rng) == ["b", "c"][: len(ranked) - 1]


def test_training_data_negatives_come_from_the_hybrid_ranking(beir: Path, base: Path) -> None:
    opts = FinetuneOptions(
        model=str(base),
        pairs=[beir],
        out=Path("unused"),
        objective="rerank",
        epochs=1,
        negatives=3,
        negative_depth=8,
    )
    cfg = resolve_config(opts)
    data = rerank_training_data(cfg, "cpu", "fp32")
    again = rerank_training_data(cfg, "cpu", "fp32")
    assert data.negatives == again.negatives  # seeded
    assert len(data) == 30 and data.sources[0]["negatives"] == 90
    from models.finetune_data import read_retrieval
    from models.finetune_rerank import retriever

    split = read_retrieval(beir, "train")
    qids = sorted(split.qrels)
    ranked = retriever(split, cfg, "cpu", "fp32").rank([split.queries[q] for q in qids], 8)
    for i, q in enumerate(qids):
        (relevant,) = split.qrels[q]
        top = [split.corpus[d] for d in ranked[i] if d != relevant]
        assert data.b[i] == split.corpus[relevant]
        assert len(data.negatives[i]) == 3
        assert all(n in top for n in data.negatives[i])
        assert split.corpus[relevant] not in data.negatives[i]


@pytest.mark.parametrize("loss", ["softmax", "bce"])
def test_rerank_objective_trains_and_reports_reranked_ndcg(
    beir: Path, base: Path, tmp_path: Path, loss: str
) -> None:
    out = tmp_path / "reranker"
    card = finetune(
        FinetuneOptions(
            model=str(base),
            pairs=[beir],
            dev=[beir],
            out=out,
            objective="rerank",
            epochs=2,
            batch_size=4,
            lr=1e-3,
            negatives=3,
            negative_depth=10,
            rerank_candidates=10,
            rerank_loss=loss,
            progress=False,
            device="cpu",
        ),
        say=lambda _: None,
    )
    assert card["kind"] == "reranker" and card["objective"] == "rerank"
    first, last = card["dev_curve"][0]["sets"]["toy"], card["dev_curve"][-1]["sets"]["toy"]
    assert first["retriever_ndcg@10"] == last["retriever_ndcg@10"] > 0
    assert first["candidates"] == 10 and first["queries"] == 10
    assert card["dev_best"] > first["ndcg@10"]  # it learns to put the source document first
    assert card["data"]["train"][0]["negatives"] == 90
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "relevant"}
    assert config["architectures"] == ["BertForSequenceClassification"]


def test_rerank_refuses_pair_files(base: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("a b\tc d\t1\n")
    with pytest.raises(ValueError, match="BEIR folder"):
        finetune(
            FinetuneOptions(
                model=str(base), pairs=[pairs], out=tmp_path / "o", objective="rerank", epochs=1
            ),
            say=lambda _: None,
        )


def test_a_resumed_rerank_run_equals_an_uninterrupted_one(
    beir: Path, base: Path, tmp_path: Path
) -> None:
    def run(out: Path, **extra: Any) -> dict[str, Any]:
        return finetune(
            FinetuneOptions(
                model=str(base),
                pairs=[beir],
                dev=[beir],
                out=out,
                objective="rerank",
                epochs=1,
                batch_size=4,
                lr=1e-3,
                rerank_candidates=8,
                eval_every=3,
                save_every=2,
                progress=False,
                device="cpu",
                **{"negatives": 2, **extra},
            ),
            say=lambda _: None,
        )

    straight = run(tmp_path / "straight")
    assert run(tmp_path / "split", stop_after=5)["steps"] == 5
    resumed = run(tmp_path / "split", resume=True)
    assert resumed["steps"] == straight["steps"] == straight["horizon"]
    assert [(p["step"], p["figure"]) for p in resumed["dev_curve"]] == [
        (p["step"], p["figure"]) for p in straight["dev_curve"]
    ]
    with pytest.raises(ValueError, match="negatives"):
        run(tmp_path / "split", resume=True, negatives=3)  # a changed setting is refused
