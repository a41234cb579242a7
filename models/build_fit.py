"""What `simsvc build` fits on, and an encoder that runs each distinct text once.

The whitening, the head and the dev figures read overlapping texts (a pair file fitted and
judged on is read by all three). `CachedEncoder` runs each distinct token sequence through
the graph once and hands back the same vectors afterwards; the build warms it with every
text it will read in one pass sorted by length, so batches pad little.

`--fit-sample N` caps each fitting file at a seeded sample of N pairs (N lines of a text
corpus): the whitening of a pair file reads the sentences of the same sampled pairs the head
trains on, so the cap bounds the build's encoding work whatever the data's size.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from models.datasets import PairSet, read_pairs, read_texts, sniff_format
from service.runtime.encoder import EncoderCore, Tokenized, WrappedCore
from service.runtime.types import FloatArray

FIT_SEED = 0
"""The seed of `--fit-sample`: the same cap on the same files picks the same pairs."""


def sample_pairs(pairs: PairSet, cap: int | None, seed: int = FIT_SEED) -> PairSet:
    """At most `cap` pairs, drawn without replacement by a seeded generator, in file order."""
    if cap is None or len(pairs.pairs) <= cap:
        return pairs
    keep = np.sort(np.random.default_rng(seed).choice(len(pairs.pairs), cap, replace=False))
    return replace(pairs, pairs=[pairs.pairs[i] for i in keep])


def fit_texts(path: Path, cap: int | None, seed: int = FIT_SEED) -> Iterator[str]:
    """The texts whitening reads from one file: all of them, or, with a cap, the sentences of
    the sampled pairs of a pair file (the head's sample) or a seeded reservoir of lines."""
    if cap is None:
        yield from read_texts(path)
    elif sniff_format(path) != "lines":
        yield from sample_pairs(read_pairs(path), cap, seed).sentences()
    else:
        rng, kept = random.Random(seed), []
        for n, text in enumerate(read_texts(path)):
            if n < cap:
                kept.append(text)
            elif (j := rng.randrange(n + 1)) < cap:
                kept[j] = text
        yield from kept


def is_pair_file(path: Path) -> bool:
    return sniff_format(path) != "lines"


@dataclass(frozen=True)
class HeadData:
    """Labelled pairs from one or more files, trained on as one set: each file's gold scale
    is mapped onto [0, 1] on its own, so STS-B English (0-5) and Chinese (0-5) or a binary
    set join without rescaling by hand; binary and graded files do not mix."""

    sets: tuple[PairSet, ...]

    @classmethod
    def read(cls, files: Sequence[Path], cap: int | None = None) -> HeadData:
        sets = tuple(sample_pairs(read_pairs(f), cap) for f in files)
        if len({s.binary for s in sets}) > 1:
            raise ValueError("--head-pairs files must be all binary or all graded")
        return cls(sets)

    @property
    def binary(self) -> bool:
        return self.sets[0].binary

    @property
    def count(self) -> int:
        return sum(len(s.pairs) for s in self.sets)

    @property
    def names(self) -> str:
        return ", ".join(Path(s.path).name for s in self.sets)

    def sentences(self) -> list[str]:
        """Unique sentences over all files, first-seen order."""
        return list(dict.fromkeys(t for s in self.sets for t in s.sentences()))

    def indices(self, where: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """Row of each pair's two sentences in `where`."""
        pairs = [p for s in self.sets for p in s.pairs]
        return np.array([where[p.a] for p in pairs]), np.array([where[p.b] for p in pairs])

    def targets(self) -> np.ndarray:
        return np.concatenate([s.targets() for s in self.sets])

    def describe_targets(self) -> str:
        if self.binary:
            return "binary labels"
        scales = dict.fromkeys(f"(score - {s.low:g}) / {s.high - s.low:g}" for s in self.sets)
        return "soft labels " + "; ".join(scales)


class CachedEncoder(WrappedCore):
    """An EncoderCore that runs each distinct token sequence once and reuses its vectors."""

    def __init__(self, core: EncoderCore) -> None:
        super().__init__(core)
        self._seen: dict[tuple[int, ...], dict[str, FloatArray]] = {}
        self.runs = 0
        """Sequences actually run through the graph."""
        self.reused = 0
        """Sequences answered from the cache."""

    def infer(self, batch: Sequence[Tokenized]) -> dict[str, FloatArray]:
        keys = [tuple(t.ids) for t in batch]
        todo = list({k: t for k, t in zip(keys, batch, strict=True) if k not in self._seen}.items())
        if todo:
            result = self._core.infer([t for _, t in todo])
            for row, (key, _) in enumerate(todo):
                self._seen[key] = {name: result[name][row] for name in self.outputs}
        self.runs += len(todo)
        self.reused += len(batch) - len(todo)
        return {
            name: np.stack([self._seen[k][name] for k in keys]).astype(np.float32, copy=False)
            for name in self.outputs
        }
