"""Which max length to encode SciFact abstracts at: nDCG@10 on a subset, per truncation.

Encodes the documents judged relevant for the train queries plus random others (1,000 in
all) at each max length with the bundle's ONNX model (its sequence axis is dynamic), and
scores the train queries by cosine of raw vectors, of the bundle's whitening, and of a
whitening fitted on the subset itself. Prints the corpus's token lengths, then a table with
the encoding time.

    .venv/bin/python bench/scifact_max_length.py --bundle BUNDLE --scifact ../shared/data/scifact
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import orjson
from tokenizers import Tokenizer

from models.beir import read_beir_qrels, read_beir_queries, to_document
from service.runtime.bundle import load_bundle
from service.runtime.encoder import OnnxEncoder, encode_texts
from service.runtime.prompts import PromptedEncoder
from service.runtime.stats import l2_normalize, ndcg_at_k
from service.runtime.types import FloatArray
from service.runtime.whitening import WhiteningAccumulator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--scifact", type=Path, required=True)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    with open(args.scifact / "corpus.jsonl", "rb") as fh:
        corpus = {d["id"]: d["text"] for d in (to_document(orjson.loads(line)) for line in fh)}
    queries = read_beir_queries(args.scifact / "queries.jsonl")
    qrels = read_beir_qrels(args.scifact / "qrels" / "train.tsv")
    relevant = sorted({d for judged in qrels.values() for d in judged})
    others = sorted(set(corpus) - set(relevant))
    random.Random(0).shuffle(others)
    ids = relevant + others[: max(0, args.documents - len(relevant))]
    qids = sorted(qrels)

    bundle = load_bundle(args.bundle)
    pooling = bundle.manifest.pooling
    # Documents and queries as the service reads them: each with the bundle's prompt.
    doc_prompt = bundle.prompts.text(None, "document")
    query_prompt = bundle.prompts.text(None, "query")
    tokenizer = Tokenizer.from_file(str(bundle.tokenizer_path))
    prompted = [doc_prompt + t for t in corpus.values()]
    lengths = np.array([len(e.ids) for e in tokenizer.encode_batch(prompted)])
    print(f"corpus: {len(lengths)} documents, median {np.median(lengths):.0f} tokens")
    for length in args.lengths:
        print(
            f"  max length {length}: {100 * np.mean(lengths > length):.0f} % truncated, "
            f"{np.minimum(lengths, length).sum() / 1e6:.2f} M tokens to encode"
        )

    def ndcg(q: FloatArray, d: FloatArray) -> float:
        top = np.argsort(-(q @ d.T), axis=1)[:, :10]
        ranked = [[ids[j] for j in row] for row in top]
        return float(np.mean([ndcg_at_k(r, qrels[q]) for q, r in zip(qids, ranked, strict=True)]))

    print(f"\nsubset: {len(ids)} documents, {len(qids)} train queries; nDCG@10\n")
    print("| max length | encode s | raw | bundle whitening | subset whitening |")
    print("|---|---|---|---|---|")
    for length in args.lengths:
        encoder = OnnxEncoder(
            bundle.model_path, bundle.tokenizer_path, length, bundle.manifest.pad_id, args.threads
        )
        as_document = PromptedEncoder(encoder, doc_prompt)
        as_query = PromptedEncoder(encoder, query_prompt)
        started = time.perf_counter()
        docs = encode_texts(as_document, [corpus[i] for i in ids])[pooling]
        seconds = time.perf_counter() - started
        qs = encode_texts(as_query, [queries[q] for q in qids])[pooling]
        acc = WhiteningAccumulator(docs.shape[1])
        acc.update(docs)
        target = acc.fit()
        w = bundle.whitening
        figures = [
            ndcg(l2_normalize(qs), l2_normalize(docs)),
            ndcg(w.apply(qs), w.apply(docs)),
            ndcg(target.apply(qs), target.apply(docs)),
        ]
        cells = " | ".join(f"{f:.4f}" for f in figures)
        print(f"| {length} | {seconds:.0f} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
