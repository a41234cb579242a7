"""The lexical index's analysers, measured with the engine the local store uses (SQLite FTS5
bm25()), beside a reference BM25 library on the same data.

English: BEIR SciFact, train qrels, nDCG@10 / recall@100: our `english` analyser in FTS5,
FTS5's own `porter` tokenizer, and the reference `bm25s` (Lucene BM25, k1 1.2, b 0.75, the
same Snowball stemmer and stop words).

Chinese: a retrieval task made from each ../shared/data/pairs-zh set: every positive pair's
first sentence is a query, its second the one relevant document, among every sentence of the
set's second column. MRR@10 and recall@10 for single characters, CJK bigrams and jieba words.

    .venv/bin/python bench/lexical.py
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, save_json, shared_dir, table
from models.beir import read_beir_qrels, read_beir_queries, to_document
from service.runtime.lexical import terms
from service.runtime.stats import ndcg_at_k, recall_at_k


def _fts(
    docs: Sequence[tuple[str, str]], queries: Sequence[str], analyse: Callable[[str], list[str]],
    k: int, tokenize: str = "unicode61 remove_diacritics 0",
) -> list[list[str]]:  # fmt: skip
    """Top-k document ids per query from an in-memory FTS5 table ranked by bm25()."""
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE VIRTUAL TABLE lex USING fts5(terms, tokenize='{tokenize}')")
    conn.executemany(
        "INSERT INTO lex (rowid, terms) VALUES (?, ?)",
        [(i, " ".join(analyse(text))) for i, (_, text) in enumerate(docs)],
    )
    out: list[list[str]] = []
    for q in queries:
        words = list(dict.fromkeys(analyse(q)))
        if not words:
            out.append([])
            continue
        expr = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        rows = conn.execute(
            "SELECT rowid FROM lex WHERE lex MATCH ? ORDER BY bm25(lex) LIMIT ?", (expr, k)
        ).fetchall()
        out.append([docs[r[0]][0] for r in rows])
    return out


def _bm25s(docs: Sequence[tuple[str, str]], queries: Sequence[str], k: int) -> list[list[str]]:
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    corpus = bm25s.tokenize(
        [t for _, t in docs], stopwords="en", stemmer=stemmer, show_progress=False
    )
    model = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    model.index(corpus, show_progress=False)
    toks = bm25s.tokenize(list(queries), stopwords="en", stemmer=stemmer, show_progress=False)
    found, _ = model.retrieve(toks, k=min(k, len(docs)), show_progress=False)
    return [[docs[int(i)][0] for i in row] for row in found]


def english(k: int = 100) -> list[list[object]]:
    scifact = shared_dir() / "data" / "scifact"
    docs = []
    for line in (scifact / "corpus.jsonl").open():
        if line.strip():
            import orjson

            d = to_document(orjson.loads(line))
            docs.append((d["id"], d["text"]))
    queries = read_beir_queries(scifact / "queries.jsonl")
    qrels = read_beir_qrels(scifact / "qrels" / "train.tsv")
    qids = [q for q in sorted(qrels) if q in queries]
    texts = [queries[q] for q in qids]
    runs = {
        "FTS5 bm25(), simsvc `english` (Snowball, Lucene stop words)": _fts(
            docs, texts, lambda t: terms("english", t), k
        ),
        "FTS5 bm25(), FTS5 `porter` tokenizer (Porter, no stop words)": _fts(
            docs, texts, lambda t: terms("simple", t), k, tokenize="porter unicode61"
        ),
        "bm25s (Lucene BM25, Snowball, Lucene stop words): reference": _bm25s(docs, texts, k),
    }
    rows = []
    for name, ranked in runs.items():
        ndcg = sum(ndcg_at_k(r, qrels[q]) for q, r in zip(qids, ranked, strict=True)) / len(qids)
        rec = sum(recall_at_k(r, qrels[q], 100) for q, r in zip(qids, ranked, strict=True))
        rows.append([name, round(100 * ndcg, 2), round(100 * rec / len(qids), 2)])
    return rows


CJK = ("cjk_char", "cjk_bigram", "cjk_uni_bigram", "jieba")


def _wiki_task(n: int = 2000) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """From Chinese Wikipedia documents: the first sentence of a document is the query, the
    rest of that document (its other paragraphs) the one relevant document."""
    import lzma

    docs: list[tuple[str, str]] = []
    queries: list[tuple[str, str]] = []
    block: list[str] = []
    path = shared_dir() / "data" / "corpus" / "zh-wiki-sample.txt.xz"
    with lzma.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                block.append(line.strip())
                continue
            first = block[0].split("。")[0] if block else ""
            if len(block) >= 3 and 8 <= len(first) <= 80:
                doc_id = str(len(docs))
                docs.append((doc_id, "".join(block[1:])))
                queries.append((first, doc_id))
                if len(docs) >= n:
                    break
            block = []
    return docs, queries


def _pairs_task(path: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A pairs-zh set as retrieval: each positive pair's first sentence is a query, its
    second sentence the relevant document among every second sentence of the set."""
    pairs = []
    for line in path.open(encoding="utf-8"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) == 3 and parts[2] in ("0", "1"):
            pairs.append(parts)
    corpus = list(dict.fromkeys(p[1] for p in pairs))
    where = {t: str(i) for i, t in enumerate(corpus)}
    docs = [(str(i), t) for i, t in enumerate(corpus)]
    return docs, [(a, where[b]) for a, b, label in pairs if label == "1"]


def chinese(k: int = 10) -> list[list[object]]:
    tasks = {"zh-wiki first sentence -> document": _wiki_task()}
    for path in sorted((shared_dir() / "data" / "pairs-zh").glob("*.tsv")):
        tasks[path.stem] = _pairs_task(path)
    rows = []
    for name, (docs, positives) in tasks.items():
        for analyser in CJK:
            ranked = _fts(docs, [a for a, _ in positives], partial(terms, analyser), k)
            mrr = sum(
                next((1 / (i + 1) for i, d in enumerate(r) if d == gold), 0.0)
                for r, (_, gold) in zip(ranked, positives, strict=True)
            ) / len(positives)
            rec = sum(gold in r for r, (_, gold) in zip(ranked, positives, strict=True))
            rows.append(
                [name, len(positives), len(docs), analyser, round(100 * mrr, 2),
                 round(100 * rec / len(positives), 2)]
            )  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def main() -> int:
    en = english()
    print(f"\n{machine()}\n\nSciFact, train qrels (809 queries), 5,183 documents\n")
    print(table(["ranking", "nDCG@10", "recall@100"], en))
    zh = chinese() if "--english-only" not in sys.argv else []
    print("\nChinese: Wikipedia (first sentence -> rest of its document), and each pairs-zh")
    print("set (a positive pair's first sentence -> its second among all second sentences)\n")
    print(table(["set", "queries", "documents", "terms", "MRR@10", "recall@10"], zh))
    save_json("lexical", {"english": en, "chinese": zh, "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
