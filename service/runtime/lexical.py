"""Analysers for the lexical (BM25) index: text -> the terms a collection indexes and queries.

One implementation serves both stores and both directions (documents at write time, queries
at search time), so a document and a query always meet on the same terms. The stores rank
the terms with BM25: SQLite's FTS5 `bm25()` in the local store, the same formula in SQL in
the PostgreSQL store.

- `english`: lower case, Unicode word tokens, Lucene's English stop words (the set
  Elasticsearch's `english` analyser removes), Snowball English stemming (PyStemmer).
- `simple`: lower case Unicode word tokens, nothing removed or stemmed (any language with
  spaces between words).

Both cut Chinese, Japanese and Korean runs (which have no spaces) as `cjk_uni_bigram` does,
so mixed text works with either; the analysers below differ only in that cut:

- `cjk_char`: CJK runs cut into single characters, other runs as `simple`.
- `cjk_bigram`: CJK runs cut into overlapping character bigrams (a lone character stays a
  unigram), other runs as `simple` (Lucene's CJKAnalyzer's rule).
- `cjk_uni_bigram`: both, characters and bigrams (CJKBigramFilter's `outputUnigrams`).
- `jieba`: Chinese word segmentation (jieba's search mode), other runs as `simple`.

The CJK choices are measured against each other in docs/collections.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import Literal

AnalyzerName = Literal["english", "simple", "cjk_char", "cjk_bigram", "cjk_uni_bigram", "jieba"]
ANALYZERS: tuple[AnalyzerName, ...] = (
    "english",
    "simple",
    "cjk_char",
    "cjk_bigram",
    "cjk_uni_bigram",
    "jieba",
)

ENGLISH_STOP_WORDS = frozenset(
    {
        *("a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into"),
        *("is", "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then"),
        *("there", "these", "they", "this", "to", "was", "will", "with"),
    }
)
"""Lucene's EnglishAnalyzer stop set (33 words)."""

_CJK = (
    "\u3040-\u30ff"  # kana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\uac00-\ud7af"  # hangul
)
_CJK_RUN = re.compile(f"[{_CJK}]+")
_TOKEN = re.compile(f"[{_CJK}]+|[^\\W_{_CJK}]+", re.UNICODE)
"""A run of CJK characters, or a run of other letters and digits (`_` separates words, as
it does for FTS5's tokenizer)."""
MAX_TERM_CHARS = 64
"""Longer tokens (base64 blobs, hashes) are dropped: they never match a query anyway."""

Cut = Callable[[str], list[str]]


def _bigrams(run: str) -> list[str]:
    if len(run) == 1:
        return [run]
    return [run[i : i + 2] for i in range(len(run) - 1)]


def _uni_bigrams(run: str) -> list[str]:
    return [*run, *_bigrams(run)] if len(run) > 1 else [run]


def _analyse(text: str, cjk: Cut, word: Callable[[str], str | None]) -> list[str]:
    """CJK runs cut by `cjk`; other words through `word` (None drops one)."""
    out: list[str] = []
    for token in _TOKEN.findall(text.lower()):
        if _CJK_RUN.fullmatch(token):
            out += cjk(token)
        elif len(token) <= MAX_TERM_CHARS and (kept := word(token)):
            out.append(kept)
    return out


@cache
def _stem() -> Callable[[str], str]:
    import Stemmer

    stem: Callable[[str], str] = Stemmer.Stemmer("english").stemWord
    return stem


def _english_word(word: str) -> str | None:
    return None if word in ENGLISH_STOP_WORDS else _stem()(word)


def _same(word: str) -> str:
    return word


@cache
def _jieba() -> Cut:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    tokenizer = jieba.Tokenizer()

    def cut(run: str) -> list[str]:
        return [w for w in tokenizer.cut_for_search(run) if w.strip()]

    return cut


_BY_NAME: dict[str, Callable[[str], list[str]]] = {
    "english": lambda t: _analyse(t, _uni_bigrams, _english_word),
    "simple": lambda t: _analyse(t, _uni_bigrams, _same),
    "cjk_char": lambda t: _analyse(t, list, _same),
    "cjk_bigram": lambda t: _analyse(t, _bigrams, _same),
    "cjk_uni_bigram": lambda t: _analyse(t, _uni_bigrams, _same),
    "jieba": lambda t: _analyse(t, lambda run: _jieba()(run), _same),
}


def analyzer(name: str) -> Callable[[str], list[str]]:
    """The analyser called `name` (ValueError for an unknown one)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown analyzer {name!r}; choose one of {ANALYZERS}") from None


def terms(name: str, text: str) -> list[str]:
    """The terms of a text under an analyser, in order, repeats kept (BM25 counts them)."""
    return analyzer(name)(text)


def fts_document(name: str, text: str) -> str:
    """The text an FTS5 column holds: the terms joined by spaces (FTS5's `unicode61`
    tokenizer splits them back apart exactly: terms are word characters only)."""
    return " ".join(terms(name, text))


def fts_query(name: str, text: str) -> str | None:
    """An FTS5 MATCH expression: any of the query's distinct terms (BM25 ranks them); None
    when the query has no term left."""
    distinct = list(dict.fromkeys(terms(name, text)))
    if not distinct:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in distinct)


def term_counts(name: str, text: str) -> tuple[dict[str, int], int]:
    """Each distinct term's count in a text, and the number of terms: what BM25 needs of a
    document (the PostgreSQL store keeps exactly these)."""
    found = terms(name, text)
    counts: dict[str, int] = {}
    for term in found:
        counts[term] = counts.get(term, 0) + 1
    return counts, len(found)


BM25_K1 = 1.2
BM25_B = 0.75
"""FTS5's bm25() constants; the PostgreSQL store ranks with the same formula."""


def bm25_idf(documents: int, matching: int) -> float:
    """FTS5's inverse document frequency: log((N - n + 0.5) / (n + 0.5)), floored at 1e-6
    (a term in most documents still counts a little, never negatively)."""
    import math

    idf = math.log((documents - matching + 0.5) / (matching + 0.5))
    return idf if idf > 0 else 1e-6
