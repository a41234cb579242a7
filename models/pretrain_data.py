"""Pretraining data: documents -> `[CLS] A [SEP] B [SEP]` instances -> padded, masked batches.

Plain functions over token ids with an explicit seeded RNG, so the sampling rules can be
tested on large samples without a model, and a run can be replayed exactly from
(seed, epoch, instances consumed). No torch here.

Corpus format: one paragraph per line, a blank line between documents; plain, .gz, .xz or
.bz2. A pair file (STS TSV and the other `read_pairs` formats) is read through `read_texts`:
each unique sentence becomes a one-paragraph document.

Instances follow BERT's `create_pretraining_data` with three changes that keep the NSP label
from being guessable from the shape of the pair:

- a chunk of one paragraph (a one-sentence document, or a paragraph longer than the target)
  is cut inside, at a word start, instead of always getting a random B;
- a random B is as long as the true continuation would have been (not "fill to the target");
- when the true B would start mid-paragraph, the random B is likewise the tail of a paragraph.

Documents are read in pools of about `pool_chars` characters: instances of a pool are
shuffled together, and a random B comes from another document of the same or the previous
pool. Memory stays bounded by the pool, not the corpus.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.datasets import open_text, read_texts, sniff_format
from service.runtime.types import IntArray

BoolArray = npt.NDArray[np.bool_]
Doc = list[list[int]]
"""A tokenized document: its paragraphs as lists of token ids (none empty)."""

Encode = Callable[[list[str]], list[list[int]]]
"""Texts -> token ids without special tokens (the tokenizer, wrapped)."""

POOL_CHARS = 2_000_000
"""Default pool size in characters (about 0.5 M tokens of English)."""

RANDOM_B_TRIES = 10
"""Documents tried for a random B long enough to match the true one (short documents,
such as one-sentence ones, would otherwise make random Bs shorter than true ones)."""

IGNORE = -100
"""Label of a position the MLM loss skips (torch's cross-entropy default)."""


@dataclass(frozen=True)
class TokenInfo:
    """What instance creation and masking need to know about the vocabulary."""

    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    special_ids: IntArray
    """Never chosen for prediction ([CLS], [SEP], [PAD], [MASK], [UNK], ...)."""
    random_ids: IntArray
    """The pool a "random token" replacement is drawn from (the non-special vocabulary)."""
    word_start: BoolArray
    """Per token id: whether it begins a word (WordPiece continuations `##…` do not)."""


@dataclass(frozen=True)
class MaskingRule:
    """BERT's rule: `rate` of the maskable tokens are chosen; of those `mask` become [MASK],
    `random` a random token and the rest stay unchanged."""

    rate: float = 0.15
    mask: float = 0.8
    random: float = 0.1


@dataclass(frozen=True)
class Instance:
    """One NSP pair; `is_random_next` is the NSP label (B from another document)."""

    tokens_a: list[int]
    tokens_b: list[int]
    is_random_next: bool


@dataclass
class Batch:
    """A padded batch (numpy, int64); `labels` is filled by masking."""

    input_ids: IntArray
    token_type_ids: IntArray
    attention_mask: IntArray
    next_sentence_label: IntArray
    maskable: BoolArray
    labels: IntArray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))


# --- corpus -------------------------------------------------------------------------------


def iter_documents(paths: Sequence[Path]) -> Iterator[list[str]]:
    """Documents (lists of paragraphs) of the corpus files, streamed."""
    for path in paths:
        if sniff_format(path) != "lines":
            for sentence in read_texts(path):
                yield [sentence]
            continue
        paragraphs: list[str] = []
        with open_text(path) as fh:
            for line in fh:
                text = line.strip()
                if text:
                    paragraphs.append(text)
                elif paragraphs:
                    yield paragraphs
                    paragraphs = []
        if paragraphs:
            yield paragraphs


def is_heldout(index: int, fraction: float) -> bool:
    """Whether document `index` belongs to the held-out split: evenly spread, no RNG, so the
    train and held-out streams never share a document."""
    return fraction > 0 and math.floor((index + 1) * fraction) > math.floor(index * fraction)


def iter_pools(documents: Iterable[list[str]], pool_chars: int) -> Iterator[list[list[str]]]:
    """Group documents into pools of at least `pool_chars` characters (the last may be less)."""
    pool: list[list[str]] = []
    size = 0
    for doc in documents:
        pool.append(doc)
        size += sum(len(p) for p in doc)
        if size >= pool_chars:
            yield pool
            pool, size = [], 0
    if pool:
        yield pool


def tokenize_pool(pool: list[list[str]], encode: Encode) -> list[Doc]:
    """Tokenize all paragraphs of a pool in one call; drop empty paragraphs and documents."""
    ids = encode([p for doc in pool for p in doc])
    docs: list[Doc] = []
    at = 0
    for doc in pool:
        segments = [s for s in ids[at : at + len(doc)] if s]
        at += len(doc)
        if segments:
            docs.append(segments)
    return docs


# --- instances ----------------------------------------------------------------------------


def truncate_pair(
    a: list[int], b: list[int], max_tokens: int, rng: random.Random
) -> tuple[list[int], list[int]]:
    """BERT's truncation: drop one token at a time from the longer side, at its front or
    back at random, until the pair fits."""
    la, lb = len(a), len(b)
    cut = {"a": [0, 0], "b": [0, 0]}  # tokens dropped at [front, back]
    while la + lb > max_tokens:
        side = "a" if la > lb else "b"
        cut[side][0 if rng.random() < 0.5 else 1] += 1
        if side == "a":
            la -= 1
        else:
            lb -= 1
    return (
        a[cut["a"][0] : len(a) - cut["a"][1]],
        b[cut["b"][0] : len(b) - cut["b"][1]],
    )


def _cut_inside(tokens: list[int], word_start: BoolArray, rng: random.Random) -> int:
    """A cut position in 1..len-1, at a word start when there is one."""
    starts = [p for p in range(1, len(tokens)) if word_start[tokens[p]]]
    return rng.choice(starts) if starts else rng.randrange(1, len(tokens))


def _can_supply(other: Doc, want: int, inside: bool) -> bool:
    if inside:
        return any(len(seg) > want for seg in other)
    return sum(len(seg) for seg in other) >= want


def _random_b(
    other: Doc, want: int, inside: bool, word_start: BoolArray, rng: random.Random
) -> list[int]:
    """`want` tokens of another document (fewer only if it is too short), shaped like the
    true continuation: a paragraph's tail when that is one, else a run from a paragraph start.
    Starts that leave enough text are preferred, so the length does not give the label away."""
    if inside:
        longer = [seg for seg in other if len(seg) > want]
        seg = rng.choice(longer) if longer else max(other, key=len)
        start = max(0, len(seg) - want)
        while 0 < start < len(seg) - 1 and not word_start[seg[start]]:
            start += 1
        return seg[start:]
    left = list(accumulate(len(seg) for seg in reversed(other)))[::-1]  # tokens from j on
    starts = [j for j, n in enumerate(left) if n >= want]
    b: list[int] = []
    for seg in other[rng.choice(starts) if starts else 0 :]:
        b.extend(seg)
        if len(b) >= want:
            break
    return b[:want]


def document_instances(
    pool: Sequence[Doc],
    index: int,
    previous: Sequence[Doc],
    max_length: int,
    word_start: BoolArray,
    rng: random.Random,
    short_seq_prob: float = 0.1,
) -> list[Instance]:
    """Instances from `pool[index]`; a random B comes from any other document of `pool` or
    `previous` (the two together must hold at least two documents)."""
    others = len(pool) + len(previous) - 1
    if others < 1:
        raise ValueError("next-sentence prediction needs at least two documents")
    doc = pool[index]
    max_tokens = max_length - 3  # [CLS] A [SEP] B [SEP]
    target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
    out: list[Instance] = []
    chunk: Doc = []
    length = 0
    i = 0
    while i < len(doc):
        chunk.append(doc[i])
        length += len(doc[i])
        if i == len(doc) - 1 or length >= target:
            is_random = rng.random() < 0.5
            inside = len(chunk) == 1
            if inside:
                seg = chunk[0]
                if len(seg) < 2:  # a one-token paragraph cannot be cut
                    chunk, length = [], 0
                    i += 1
                    continue
                cut = _cut_inside(seg, word_start, rng)
                a, true_b = seg[:cut], seg[cut:]
                a_end = 1
            else:
                a_end = rng.randint(1, len(chunk) - 1)
                a = list(chain.from_iterable(chunk[:a_end]))
                true_b = list(chain.from_iterable(chunk[a_end:]))
            if is_random:
                want = min(len(true_b), max_tokens)
                for _ in range(RANDOM_B_TRIES):
                    pick = rng.randrange(others)
                    pick += pick >= index  # skip the document itself
                    other = pool[pick] if pick < len(pool) else previous[pick - len(pool)]
                    if _can_supply(other, want, inside):
                        break
                b = _random_b(other, want, inside, word_start, rng)
                # The paragraphs after A were not used: they start the next chunk.
                i -= len(chunk) - a_end
            else:
                b = true_b
            a, b = truncate_pair(a, b, max_tokens, rng)
            if a and b:
                out.append(Instance(a, b, is_random))
            chunk, length = [], 0
        i += 1
    return out


def iter_instances(
    pools: Iterable[list[Doc]],
    max_length: int,
    word_start: BoolArray,
    rng: random.Random,
    short_seq_prob: float = 0.1,
) -> Iterator[Instance]:
    """Instances pool by pool, shuffled within each pool."""
    previous: list[Doc] = []
    pending: list[Doc] = []
    for pool in pools:
        pool = pending + pool
        if len(pool) + len(previous) < 2:
            pending = pool  # too few documents for a random B yet: wait for the next pool
            continue
        pending = []
        instances: list[Instance] = []
        for index in range(len(pool)):
            instances.extend(
                document_instances(
                    pool, index, previous, max_length, word_start, rng, short_seq_prob
                )
            )
        rng.shuffle(instances)
        yield from instances
        previous = pool
    if pending:
        raise ValueError("next-sentence prediction needs a corpus of at least two documents")


def stream_instances(
    paths: Sequence[Path],
    encode: Encode,
    word_start: BoolArray,
    max_length: int,
    seed: int,
    epoch: int = 0,
    part: str = "all",
    heldout: float = 0.0,
    pool_chars: int = POOL_CHARS,
) -> Iterator[Instance]:
    """The instances of one pass over the corpus; the same arguments give the same stream.

    `part` is "train" (documents outside the held-out split), "heldout" or "all".
    """
    if part not in ("train", "heldout", "all"):
        raise ValueError(f"part must be train, heldout or all, got {part!r}")
    docs: Iterable[list[str]] = iter_documents(paths)
    if part != "all":
        want_heldout = part == "heldout"
        docs = (d for i, d in enumerate(docs) if is_heldout(i, heldout) == want_heldout)
    rng = random.Random(f"simsvc-pretrain/{part}/{seed}/{epoch}")
    pools = (tokenize_pool(p, encode) for p in iter_pools(docs, pool_chars))
    yield from iter_instances(pools, max_length, word_start, rng)


# --- batches ------------------------------------------------------------------------------


def collate(instances: Sequence[Instance], tokens: TokenInfo) -> Batch:
    """Pad `[CLS] A [SEP] B [SEP]` rows to the longest in the batch; segment ids 0 then 1."""
    width = max(len(x.tokens_a) + len(x.tokens_b) + 3 for x in instances)
    ids = np.full((len(instances), width), tokens.pad_id, dtype=np.int64)
    types = np.zeros_like(ids)
    attention = np.zeros_like(ids)
    for row, x in enumerate(instances):
        seq = [tokens.cls_id, *x.tokens_a, tokens.sep_id, *x.tokens_b, tokens.sep_id]
        ids[row, : len(seq)] = seq
        types[row, len(x.tokens_a) + 2 : len(seq)] = 1
        attention[row, : len(seq)] = 1
    maskable = (attention == 1) & ~np.isin(ids, tokens.special_ids)
    nsp = np.asarray([int(x.is_random_next) for x in instances], dtype=np.int64)
    return Batch(ids, types, attention, nsp, maskable)


def mask_tokens(
    input_ids: IntArray,
    maskable: BoolArray,
    rng: np.random.Generator,
    mask_id: int,
    random_ids: IntArray,
    rule: MaskingRule = MaskingRule(),
) -> tuple[IntArray, IntArray]:
    """Choose `rule.rate` of each row's maskable tokens and corrupt them by the 80/10/10 rule.

    Each row gets floor(n * rate) chosen tokens plus one more with probability equal to the
    fraction, so the share is exactly `rate` in expectation even for short rows. Returns
    (corrupted ids, labels): labels hold the original id at chosen positions, else IGNORE.
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    rows, width = ids.shape
    want = maskable.sum(axis=1) * rule.rate
    k = np.floor(want).astype(np.int64) + (rng.random(rows) < want - np.floor(want))
    keys = np.where(maskable, rng.random((rows, width)), 2.0)
    ranks = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
    chosen = (ranks < k[:, None]) & maskable
    labels = np.where(chosen, ids, IGNORE)
    roll = rng.random((rows, width))
    to_mask = chosen & (roll < rule.mask)
    to_random = chosen & (roll >= rule.mask) & (roll < rule.mask + rule.random)
    out = ids.copy()
    out[to_mask] = mask_id
    out[to_random] = random_ids[rng.integers(0, len(random_ids), size=int(to_random.sum()))]
    return out, labels


def mask_batch(
    batch: Batch, tokens: TokenInfo, rng: np.random.Generator, rule: MaskingRule = MaskingRule()
) -> Batch:
    """The batch with its input ids masked and its labels set (a new object)."""
    ids, labels = mask_tokens(
        batch.input_ids, batch.maskable, rng, tokens.mask_id, tokens.random_ids, rule
    )
    return Batch(
        ids,
        batch.token_type_ids,
        batch.attention_mask,
        batch.next_sentence_label,
        batch.maskable,
        labels,
    )


class InstanceCursor:
    """An endless instance stream over epochs whose position is (epoch, consumed).

    Each epoch re-reads the corpus with its own seed (new cuts, pairs and order). To resume,
    build a cursor at the saved position: the epoch's stream is replayed up to it, which is
    cheap next to training on the same instances.
    """

    def __init__(
        self, make: Callable[[int], Iterator[Instance]], epoch: int = 0, consumed: int = 0
    ) -> None:
        self._make = make
        self.epoch = epoch
        self.consumed = 0
        self._it = make(epoch)
        for _ in range(consumed):
            self._next()

    def _next(self) -> Instance:
        for attempt in range(2):
            try:
                item = next(self._it)
                self.consumed += 1
                return item
            except StopIteration:
                if attempt == 1 or self.consumed == 0:
                    break
                self.epoch += 1
                self.consumed = 0
                self._it = self._make(self.epoch)
        raise ValueError("the training corpus yields no instances")

    def take(self, n: int) -> list[Instance]:
        """The next `n` instances."""
        return [self._next() for _ in range(n)]
