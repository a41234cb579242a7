"""Readers for the text and pair formats the pipeline takes (no torch needed).

Pairs: STS-B style TSV with a header (score, sentence1, sentence2, ...), the Chinese STS-B
`id||s1||s2||score` lines, and headerless `s1<TAB>s2<TAB>label` files. Texts: one per line,
or the sentence columns of any pair file. Plain, .gz, .xz and .bz2 files are read streaming.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np


def open_text(path: Path) -> IO[str]:
    """Open a text file for reading, decompressing by suffix."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    if suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8")
    if suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


@dataclass(frozen=True)
class LabelledPair:
    a: str
    b: str
    score: float


@dataclass(frozen=True)
class PairSet:
    """Labelled pairs from one file; `low`/`high` bound the gold scale."""

    path: str
    format: str
    pairs: list[LabelledPair]
    low: float
    high: float

    @property
    def binary(self) -> bool:
        return self.format == "binary"

    def scores(self) -> np.ndarray:
        return np.asarray([p.score for p in self.pairs], dtype=np.float64)

    def targets(self) -> np.ndarray:
        """Gold scores mapped onto [0, 1] (soft labels for the head)."""
        span = self.high - self.low
        return (self.scores() - self.low) / (span if span > 0 else 1.0)

    def sentences(self) -> list[str]:
        """Unique sentences of both columns, first-seen order."""
        seen: dict[str, None] = {}
        for p in self.pairs:
            seen.setdefault(p.a, None)
            seen.setdefault(p.b, None)
        return list(seen)


def sniff_format(path: Path) -> str:
    """'sts-tsv', 'sts-zh', 'binary' (s1, s2, 0/1) or 'lines'."""
    with open_text(path) as fh:
        first = fh.readline().rstrip("\n")
    if "||" in first and len(first.split("||")) == 4:
        return "sts-zh"
    cols = first.split("\t")
    lowered = [c.strip().lower() for c in cols]
    if "sentence1" in lowered and "sentence2" in lowered:
        return "sts-tsv"
    if len(cols) == 3 and cols[2].strip() in {"0", "1"}:
        return "binary"
    return "lines"


def read_pairs(path: Path) -> PairSet:
    """Read a labelled pair file of any supported format."""
    fmt = sniff_format(path)
    pairs: list[LabelledPair] = []
    with open_text(path) as fh:
        if fmt == "sts-tsv":
            header = [c.strip().lower() for c in fh.readline().rstrip("\n").split("\t")]
            i_s, i_a, i_b = (
                header.index("score"),
                header.index("sentence1"),
                header.index("sentence2"),
            )
            for line in fh:
                cols = line.rstrip("\n").split("\t")
                if len(cols) > max(i_s, i_a, i_b) and cols[i_a] and cols[i_b]:
                    pairs.append(LabelledPair(cols[i_a], cols[i_b], float(cols[i_s])))
        elif fmt == "sts-zh":
            for line in fh:
                cols = line.rstrip("\n").split("||")
                if len(cols) == 4 and cols[1] and cols[2]:
                    pairs.append(LabelledPair(cols[1], cols[2], float(cols[3])))
        elif fmt == "binary":
            for line in fh:
                cols = line.rstrip("\n").split("\t")
                if len(cols) >= 3 and cols[0] and cols[1]:
                    pairs.append(LabelledPair(cols[0], cols[1], float(cols[2])))
        else:
            raise ValueError(
                f"{path}: not a pair file (expected an STS TSV with sentence1/sentence2 header, "
                "'id||s1||s2||score' lines, or 's1<TAB>s2<TAB>0/1' lines)"
            )
    if not pairs:
        raise ValueError(f"{path}: no pairs found")
    if fmt in ("sts-tsv", "sts-zh"):
        # The STS 0–5 scale (SICK's 1–5 fits in it); other ranges map by their extremes.
        scores = [p.score for p in pairs]
        inside = min(scores) >= 0 and max(scores) <= 5
        low, high = (0.0, 5.0) if inside else (min(scores), max(scores))
    else:
        low, high = 0.0, 1.0
    return PairSet(str(path), "binary" if fmt == "binary" else "sts", pairs, low, high)


def read_texts(path: Path) -> Iterator[str]:
    """Texts of a file, streamed: the sentence columns of a pair file, else non-empty lines."""
    if sniff_format(path) != "lines":
        yield from read_pairs(path).sentences()
        return
    with open_text(path) as fh:
        for line in fh:
            text = line.strip()
            if text:
                yield text
