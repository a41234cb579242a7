"""Data for `simsvc finetune`: labelled and positive pairs, BEIR retrieval sets, the seeded
train/dev cut, and the batch order of each epoch (no torch needed).

Inputs (`--pairs`, `--dev`), sniffed per path:

- an STS-B TSV with a header (scores 0–5), Chinese STS-B `id||s1||s2||score`, or headerless
  `s1<TAB>s2<TAB>0/1` (read by `models.datasets.read_pairs`): labelled pairs;
- a headerless two-column `query<TAB>positive` file: positive pairs (MNRL);
- a BEIR folder (`corpus.jsonl`, `queries.jsonl`, `qrels/`): positive (query, document)
  pairs from `qrels/train.tsv` for training and `qrels/dev.tsv` for `--dev`; a qrels file
  inside such a folder picks that split instead.

Labels keep their order across files: graded scores are mapped onto [0, 1] by their file's
scale, binary labels are 0/1 and positives 1.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from models.beir import read_beir_qrels, read_beir_queries, to_document
from models.datasets import open_text, read_pairs, sniff_format

KINDS = ("graded", "binary", "positive")


@dataclass(frozen=True)
class PairData:
    """Pairs to train or score on: texts, targets in [0, 1], gold scores as read."""

    kind: str
    a: list[str]
    b: list[str]
    target: np.ndarray
    gold: np.ndarray
    sources: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.a)


@dataclass(frozen=True)
class RetrievalSet:
    """Queries, the corpus and relevance judgements of one BEIR split (for nDCG on dev)."""

    path: str
    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _beir_root(path: Path) -> tuple[Path, Path] | None:
    """(BEIR folder, qrels file) when `path` is a BEIR folder or a qrels file in one."""
    if path.is_dir() and (path / "corpus.jsonl").is_file():
        return path, path / "qrels"
    if path.is_file() and path.parent.name == "qrels":
        root = path.parent.parent
        if (root / "corpus.jsonl").is_file() and (root / "queries.jsonl").is_file():
            return root, path
    return None


def read_corpus(path: Path) -> dict[str, str]:
    """A BEIR corpus: id -> title and text (the title first, as the collections index it)."""
    out: dict[str, str] = {}
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                doc = to_document(orjson.loads(line))
                out[str(doc["id"])] = str(doc["text"])
    return out


def read_retrieval(path: Path, split: str = "dev") -> RetrievalSet:
    """A BEIR folder's `qrels/<split>.tsv` (or the qrels file given) with its texts."""
    found = _beir_root(path)
    if found is None:
        raise ValueError(f"{path}: not a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    root, qrels_path = found
    if qrels_path.is_dir():
        qrels_path = qrels_path / f"{split}.tsv"
    if not qrels_path.is_file():
        raise ValueError(f"{root}: no {qrels_path.relative_to(root)} (cut one: simsvc split-pairs)")
    queries = read_beir_queries(root / "queries.jsonl")
    corpus = read_corpus(root / "corpus.jsonl")
    qrels = {
        q: {d: g for d, g in rel.items() if d in corpus}
        for q, rel in read_beir_qrels(qrels_path).items()
        if q in queries
    }
    qrels = {q: rel for q, rel in qrels.items() if any(g > 0 for g in rel.values())}
    if not qrels:
        raise ValueError(f"{qrels_path}: no judged query with a relevant document")
    return RetrievalSet(str(qrels_path), queries, corpus, qrels)


def _beir_pairs(found: RetrievalSet) -> tuple[list[str], list[str]]:
    a: list[str] = []
    b: list[str] = []
    for q in sorted(found.qrels):
        for d in sorted(found.qrels[q]):
            if found.qrels[q][d] > 0:
                a.append(found.queries[q])
                b.append(found.corpus[d])
    return a, b


def _two_columns(path: Path) -> tuple[list[str], list[str]]:
    a: list[str] = []
    b: list[str] = []
    with open_text(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 2 or not cols[0].strip() or not cols[1].strip():
                raise ValueError(
                    f"{path}:{n}: not a pair file (expected an STS TSV, 'id||s1||s2||score', "
                    "'s1<TAB>s2<TAB>0/1', 'query<TAB>positive', or a BEIR folder)"
                )
            a.append(cols[0])
            b.append(cols[1])
    return a, b


def _read_one(path: Path, split: str) -> tuple[str, list[str], list[str], np.ndarray, np.ndarray]:
    if _beir_root(path) is not None:
        a, b = _beir_pairs(read_retrieval(path, split))
        ones = np.ones(len(a))
        return "positive", a, b, ones, ones
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pair file or BEIR folder")
    if sniff_format(path) == "lines":
        a, b = _two_columns(path)
        ones = np.ones(len(a))
        return "positive", a, b, ones, ones
    pairs = read_pairs(path)
    a = [p.a for p in pairs.pairs]
    b = [p.b for p in pairs.pairs]
    kind = "binary" if pairs.binary else "graded"
    return kind, a, b, pairs.targets(), pairs.scores()


def read_pair_data(paths: list[Path], split: str = "train") -> PairData:
    """All pairs of the given files (of one kind; graded and binary mix as graded)."""
    if not paths:
        raise ValueError("no pair files given")
    kinds: list[str] = []
    a: list[str] = []
    b: list[str] = []
    targets: list[np.ndarray] = []
    gold: list[np.ndarray] = []
    sources = []
    for path in paths:
        kind, pa, pb, t, g = _read_one(Path(path), split)
        if not pa:
            raise ValueError(f"{path}: no pairs found")
        kinds.append(kind)
        a += pa
        b += pb
        targets.append(t)
        gold.append(g)
        sources.append({"path": Path(path).name, "kind": kind, "pairs": len(pa)})
    if "positive" in kinds and len(set(kinds)) > 1:
        raise ValueError("positive pairs (two columns, BEIR) cannot be mixed with labelled pairs")
    kind = kinds[0] if len(set(kinds)) == 1 else "graded"
    return PairData(kind, a, b, np.concatenate(targets), np.concatenate(gold), sources)


def is_retrieval(path: Path) -> bool:
    """Whether a `--dev` path is scored by retrieval (nDCG@10) rather than by Spearman."""
    return _beir_root(Path(path)) is not None


# --- the train/dev cut ----------------------------------------------------------------------


def dev_indices(n: int, dev_share: float, seed: int) -> np.ndarray:
    """Which of `n` items go to dev: the first round(share * n) of a seeded permutation
    (numpy's `default_rng(seed).permutation(n)`), in ascending order."""
    if not 0 < dev_share < 1:
        raise ValueError(f"the dev share must be in (0, 1), got {dev_share}")
    take = max(1, round(dev_share * n))
    return np.sort(np.random.default_rng(seed).permutation(n)[:take])


def split_pairs(path: Path, out: Path, dev_share: float = 0.2, seed: int = 0) -> dict[str, Any]:
    """Cut a pair file or a BEIR folder's training qrels into train and dev, into `out`.

    A pair file's lines (its header kept in both) become `out/train.<ext>` and
    `out/dev.<ext>`, unchanged. A BEIR folder's `qrels/train.tsv` is cut by query (all
    judgements of a query go the same way) into `out/qrels/train.tsv` and `qrels/dev.tsv`,
    beside copies of its corpus and queries, so `out` is itself a BEIR folder.
    """
    path = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if _beir_root(path) is not None and path.is_dir():
        qrels = path / "qrels" / "train.tsv"
        lines = qrels.read_text(encoding="utf-8").splitlines()
        first, body = lines[0], [line for line in lines[1:] if line.strip()]
        queries = sorted({line.split("\t")[0] for line in body})
        dev_q = {queries[i] for i in dev_indices(len(queries), dev_share, seed)}
        (out / "qrels").mkdir(exist_ok=True)
        parts = {
            "train": [line for line in body if line.split("\t")[0] not in dev_q],
            "dev": [line for line in body if line.split("\t")[0] in dev_q],
        }
        for name, rows in parts.items():
            (out / "qrels" / f"{name}.tsv").write_text("\n".join([first, *rows]) + "\n")
        for name in ("corpus.jsonl", "queries.jsonl"):
            shutil.copyfile(path / name, out / name)
        return {
            "source": path.name,
            "queries": {"train": len(queries) - len(dev_q), "dev": len(dev_q)},
            "judgements": {k: len(v) for k, v in parts.items()},
        }
    fmt = sniff_format(path)
    if fmt == "lines" and not _two_columns(path)[0]:
        raise ValueError(f"{path}: no pairs to cut")
    with open_text(path) as fh:
        lines = [line.rstrip("\n") for line in fh if line.strip()]
    header = lines[:1] if fmt == "sts-tsv" else []
    body = lines[len(header) :]
    dev = set(dev_indices(len(body), dev_share, seed).tolist())
    suffix = ".tsv" if fmt in ("sts-tsv", "binary", "lines") else ".txt"
    parts = {
        "train": [line for i, line in enumerate(body) if i not in dev],
        "dev": [line for i, line in enumerate(body) if i in dev],
    }
    for name, rows in parts.items():
        (out / f"{name}{suffix}").write_text("\n".join(header + rows) + "\n", encoding="utf-8")
    return {"source": path.name, "pairs": {k: len(v) for k, v in parts.items()}}


# --- epochs and batches ---------------------------------------------------------------------


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the training items in an epoch: a permutation seeded by (seed, epoch)."""
    return np.random.default_rng([seed, 7, epoch]).permutation(n)


def plain_batches(order: np.ndarray, size: int) -> list[list[int]]:
    """Consecutive slices of `order`; a last batch of one item is dropped (nothing to rank)."""
    batches = [order[i : i + size].tolist() for i in range(0, len(order), size)]
    return [b for b in batches if len(b) > 1]


def bucketed_batches(
    order: np.ndarray, size: int, lengths: np.ndarray, window: int, rng: np.random.Generator
) -> list[list[int]]:
    """Batches of similar length, to pad less: each run of `window` batches' worth of the
    order is sorted by length and cut, and the batches are then shuffled. `window` 1 gives
    `plain_batches` in shuffled order."""
    batches: list[list[int]] = []
    span = size * max(1, window)
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += plain_batches(chunk, size)
    return [batches[i] for i in rng.permutation(len(batches))]


def distinct_batches(order: np.ndarray, size: int, a: list[str], b: list[str]) -> list[list[int]]:
    """Batches in which no query and no positive appears twice, so no in-batch negative is
    in truth a positive. An item that would repeat one waits for a later batch (kept in
    order); what cannot be placed at the end forms the last batches."""
    batches: list[list[int]] = []
    waiting: list[int] = []
    stream = iter(order.tolist())
    exhausted = False
    while not exhausted or waiting:
        batch: list[int] = []
        seen_a: set[str] = set()
        seen_b: set[str] = set()
        held: list[int] = []
        for i in waiting:
            if len(batch) < size and a[i] not in seen_a and b[i] not in seen_b:
                batch.append(i)
                seen_a.add(a[i])
                seen_b.add(b[i])
            else:
                held.append(i)
        while len(batch) < size and not exhausted:
            item = next(stream, None)
            if item is None:
                exhausted = True
            elif a[item] not in seen_a and b[item] not in seen_b:
                batch.append(item)
                seen_a.add(a[item])
                seen_b.add(b[item])
            else:
                held.append(item)
        waiting = held
        if len(batch) > 1:  # each pass places at least one waiting item: this ends
            batches.append(batch)
    return batches


def both_orders(data: PairData) -> PairData:
    """Each pair also as (b, a): a cross-encoder reads the two texts asymmetrically."""
    return PairData(
        data.kind,
        data.a + data.b,
        data.b + data.a,
        np.concatenate([data.target, data.target]),
        np.concatenate([data.gold, data.gold]),
        data.sources,
    )
