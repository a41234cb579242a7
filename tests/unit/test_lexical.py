"""The lexical analysers: what terms documents and queries meet on."""

from __future__ import annotations

import math
import sqlite3

import pytest

from service.runtime.lexical import (
    ANALYZERS,
    bm25_idf,
    fts_document,
    fts_query,
    term_counts,
    terms,
)


def test_english_stems_and_drops_lucene_stop_words() -> None:
    assert terms("english", "The cats are RUNNING in the parks") == ["cat", "run", "park"]
    assert terms("english", "the and of") == []
    assert terms("english", "studies generalization") == ["studi", "general"]


def test_simple_keeps_every_word_and_splits_underscores() -> None:
    assert terms("simple", "The cats_are here, 42!") == ["the", "cats", "are", "here", "42"]


def test_english_and_simple_cut_chinese_runs_too() -> None:
    assert terms("english", "Running 机器") == ["run", "机", "器", "机器"]
    assert terms("simple", "机器学习") == ["机", "器", "学", "习", "机器", "器学", "学习"]


def test_cjk_analysers_cut_chinese_runs_and_keep_other_words() -> None:
    text = "机器学习很有趣 with BERT"
    assert terms("cjk_char", text) == ["机", "器", "学", "习", "很", "有", "趣", "with", "bert"]
    assert terms("cjk_bigram", "机器学习") == ["机器", "器学", "学习"]
    assert terms("cjk_bigram", "我") == ["我"]
    assert terms("cjk_uni_bigram", "机器") == ["机", "器", "机器"]
    words = terms("jieba", "机器学习很有趣")
    assert "机器" in words and "学习" in words


def test_overlong_tokens_are_dropped() -> None:
    assert terms("simple", "a" * 65 + " ok") == ["ok"]


@pytest.mark.parametrize("name", ANALYZERS)
def test_fts5_reads_back_exactly_the_terms(name: str) -> None:
    """FTS5's unicode61 tokenizer must split our joined terms back into the same terms, or
    FTS5's and PostgreSQL's BM25 would count differently."""
    text = "Le café est fermé; 机器学习 2024 résumé naïve Straße snake_case_name"
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='unicode61 remove_diacritics 0')")
    conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
    conn.execute("INSERT INTO t (rowid, x) VALUES (1, ?)", (fts_document(name, text),))
    got = [r[0] for r in conn.execute("SELECT term FROM v ORDER BY offset")]
    assert got == terms(name, text)


def test_queries_match_any_term_and_quote_safely() -> None:
    assert fts_query("english", "the running cats") == '"run" OR "cat"'
    assert fts_query("english", "the and") is None
    assert fts_query("simple", 'say "hi"') == '"say" OR "hi"'


def test_term_counts_and_idf() -> None:
    assert term_counts("simple", "a b a") == ({"a": 2, "b": 1}, 3)
    assert bm25_idf(100, 1) == pytest.approx(math.log(99.5 / 1.5))
    assert bm25_idf(100, 90) == 1e-6  # common terms count a little, never negatively
