"""`simsvc finetune --objective rerank`: a relevance cross-encoder for search.

Training items are a BEIR folder's (query, relevant document) pairs from `qrels/train.tsv`,
each with `--negatives` hard negatives: non-relevant documents drawn (seeded) from the
`--negative-depth` best of the service's own hybrid ranking of the corpus
(`models/negatives.py`: BM25 + the base bi-encoder, fused as search fuses them). The loss
is listwise softmax cross-entropy over (1 positive + n negatives) logits, or binary
cross-entropy on each of them (`--rerank-loss bce`). Query and document are read raw (no
prompts): the service's /rerank and search `rerank` pass them so.

The dev figure is nDCG@10 x100 of reranking the retriever's `--rerank-candidates` best
documents for each `qrels/dev.tsv` query (with the retriever's own nDCG@10 beside it);
`simsvc split-pairs` cuts a dev split off a folder that has only train judgements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.checkpoint_files import training_tokenizer
from models.finetune_config import TrainConfig
from models.finetune_data import PairData, RetrievalSet, is_retrieval, read_retrieval
from models.finetune_models import (
    encode_texts,
    load_encoder,
    score_pairs,
    st_max_length,
    st_pooling,
)
from models.negatives import DenseEncoder, HybridRetriever, mine_negatives
from models.prompts import PromptOptions, read_st_prompts, resolve_prompts
from service.runtime.stats import ndcg_at_k


@dataclass(frozen=True)
class RerankData(PairData):
    """(query, positive) pairs and each one's hard negatives (document texts)."""

    negatives: list[list[str]] = field(default_factory=list)


def dense_encoder(model: str, device: Any, precision: str) -> DenseEncoder:
    """The base bi-encoder as the service would serve it: its pooling, and its query and
    document prompts."""
    net = load_encoder(model).to(device)
    pooling = st_pooling(model) or "mean"
    max_length = min(st_max_length(model) or 256, 512)
    prompts = resolve_prompts(*read_st_prompts(model), PromptOptions())
    prefix = {
        "query": prompts.prompts.get(prompts.query_name or "", ""),
        "document": prompts.prompts.get(prompts.document_name or "", ""),
    }
    tokenizer = training_tokenizer(model)

    def encode(texts: list[str], use: str) -> np.ndarray:
        shown = [prefix[use] + t for t in texts]
        return encode_texts(net, tokenizer, shown, pooling, max_length, device, precision)

    return encode


_RETRIEVERS: dict[tuple[str, str], HybridRetriever] = {}


def retriever(corpus_of: RetrievalSet, cfg: TrainConfig, device: Any, precision: str) -> Any:
    """The hybrid retriever over a BEIR corpus (built once per corpus and model)."""
    root = str(Path(corpus_of.path).parent.parent)
    key = (root, cfg.retriever_model)
    if key not in _RETRIEVERS:
        encode = dense_encoder(cfg.retriever_model, device, precision)
        _RETRIEVERS[key] = HybridRetriever.build(corpus_of.corpus, encode)
    return _RETRIEVERS[key]


def rerank_training_data(cfg: TrainConfig, device: Any, precision: str) -> RerankData:
    """Each judged (query, relevant document) pair with its mined hard negatives."""
    rng = np.random.default_rng([cfg.seed, 11])
    a: list[str] = []
    b: list[str] = []
    negatives: list[list[str]] = []
    sources = []
    for path in cfg.pairs:
        if not is_retrieval(Path(path)):
            raise ValueError(f"--pairs {path}: --objective rerank trains on a BEIR folder")
        data = read_retrieval(Path(path), "train")
        qids = sorted(data.qrels)
        ranked = retriever(data, cfg, device, precision).rank(
            [data.queries[q] for q in qids], cfg.negative_depth
        )
        mined = 0
        for q, ranking in zip(qids, ranked, strict=True):
            relevant = {d for d, g in data.qrels[q].items() if g > 0}
            negs = mine_negatives(ranking, relevant, cfg.negatives, cfg.negative_depth, rng)
            mined += len(negs)
            for d in sorted(relevant):
                a.append(data.queries[q])
                b.append(data.corpus[d])
                negatives.append([data.corpus[n] for n in negs])
        sources.append(
            {"path": Path(path).name, "kind": "positive", "pairs": len(a), "negatives": mined}
        )
    ones = np.ones(len(a))
    return RerankData("positive", a, b, ones, ones, sources, negatives)


def rerank_loss(net: Any, logits_of: Any, data: RerankData, rows: list[int], loss: str) -> Any:
    """The loss of a batch of groups (positive first, then its negatives); `logits_of`
    scores a list of (query, document) pairs."""
    import torch
    import torch.nn.functional as F

    groups = [[data.b[i], *data.negatives[i]] for i in rows]
    width = max(len(g) for g in groups)
    queries = [data.a[i] for i, g in zip(rows, groups, strict=True) for _ in g]
    docs = [d for g in groups for d in g]
    flat = logits_of(queries, docs)
    if loss == "bce":
        target = torch.tensor(
            [float(j == 0) for g in groups for j in range(len(g))], device=flat.device
        )
        return F.binary_cross_entropy_with_logits(flat, target)
    table = torch.full((len(groups), width), float("-inf"), device=flat.device)
    start = 0
    for row, g in enumerate(groups):
        table[row, : len(g)] = flat[start : start + len(g)]
        start += len(g)
    return F.cross_entropy(table, torch.zeros(len(groups), dtype=torch.long, device=flat.device))


class RerankDev:
    """Dev queries with the retriever's candidates; `figures` is nDCG@10 of reranking them."""

    def __init__(self, cfg: TrainConfig, device: Any, precision: str) -> None:
        self.sets: list[tuple[str, Any]] = []
        self.candidates: list[dict[str, list[str]]] = []
        self.retrieved: list[float] = []
        for p in cfg.dev:
            if not is_retrieval(Path(p)):
                raise ValueError(f"--dev {p}: --objective rerank is scored on a BEIR folder")
            data = read_retrieval(Path(p), "dev")
            qids = sorted(data.qrels)
            ranked = retriever(data, cfg, device, precision).rank(
                [data.queries[q] for q in qids], cfg.rerank_candidates
            )
            self.sets.append((Path(p).name, data))
            self.candidates.append(dict(zip(qids, ranked, strict=True)))
            ndcg = [ndcg_at_k(r, data.qrels[q], 10) for q, r in zip(qids, ranked, strict=True)]
            self.retrieved.append(round(100 * float(np.mean(ndcg)), 2))

    def __bool__(self) -> bool:
        return bool(self.sets)

    def figures(
        self,
        net: Any,
        tok: Any,
        objective: str,
        pooling: str,
        max_length: int,
        device: Any,
        precision: str,
        prompts: tuple[str, str] = ("", ""),
    ) -> dict[str, dict[str, float]]:
        """nDCG@10 of the reranked candidates per dev set (cross-encoders read raw text:
        `prompts` is unused)."""
        out: dict[str, dict[str, float]] = {}
        for (name, data), cands, base in zip(
            self.sets, self.candidates, self.retrieved, strict=True
        ):
            pairs = [(q, d) for q in sorted(cands) for d in cands[q]]
            scores = score_pairs(
                net,
                tok,
                [data.queries[q] for q, _ in pairs],
                [data.corpus[d] for _, d in pairs],
                max_length,
                device,
                precision,
            )
            ndcg = []
            start = 0
            for q in sorted(cands):
                ids = cands[q]
                s = scores[start : start + len(ids)]
                start += len(ids)
                order = np.argsort(-s, kind="stable")
                ndcg.append(ndcg_at_k([ids[i] for i in order], data.qrels[q], 10))
            out[name] = {
                "ndcg@10": round(100 * float(np.mean(ndcg)), 2),
                "retriever_ndcg@10": base,
                "candidates": max(len(c) for c in cands.values()),
                "queries": len(cands),
            }
        return out
