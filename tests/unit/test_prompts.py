"""Prompts: the runtime's one way to apply them, and how the build resolves them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from models.prompts import (
    PromptOptions,
    add_prompt_arguments,
    prompt_options,
    read_st_prompts,
    resolve_prompts,
)
from service.errors import ValidationError
from service.runtime.prompts import PromptedEncoder, Prompts
from tests.fakes import FakeEncoder

E5 = {"query": "query: ", "passage": "passage: "}


def e5_prompts() -> Prompts:
    return Prompts(prompts=E5, default_name="query", query_name="query", document_name="passage")


def test_apply_prepends_the_named_prompt_or_the_role_s() -> None:
    p = e5_prompts()
    assert p.apply(["a b"], "passage") == ["passage: a b"]
    assert p.apply(["a b"]) == ["query: a b"]
    assert p.apply(["a b"], role="document") == ["passage: a b"]
    assert p.apply(["x", "y"], role="query") == ["query: x", "query: y"]


def test_no_prompts_leaves_texts_alone_and_unknown_names_are_refused() -> None:
    plain = Prompts()
    assert plain.apply(["a", "b"]) == ["a", "b"]
    assert plain.text(None, "document") == ""
    with pytest.raises(ValidationError, match="unknown prompt_name 'query'") as info:
        plain.apply(["a"], "query")
    assert info.value.param == "prompt_name"
    with pytest.raises(ValidationError, match="passage, query"):
        e5_prompts().apply(["a"], "doc")


def test_a_role_naming_a_missing_prompt_is_refused() -> None:
    with pytest.raises(ValueError, match="document prompt name 'doc'"):
        Prompts(prompts=E5, document_name="doc")


def test_the_prompt_counts_against_the_token_limit() -> None:
    core = FakeEncoder(max_length=6)
    text = "one two three four"  # 4 words + 2 specials: fits alone
    assert not core.tokenize([text])[0].truncated
    prompted = PromptedEncoder(core, "query: ")
    (tok,) = prompted.tokenize([text])
    assert tok.truncated and len(tok) == 6
    assert list(tok.ids) == list(core.tokenize(["query: " + text])[0].ids)
    # Token ids are taken as given: the prompt is text, not ids.
    assert prompted.from_ids([[5, 6]])[0].ids == core.from_ids([[5, 6]])[0].ids


def test_e5_style_model_resolves_query_and_passage_with_query_as_default() -> None:
    p = resolve_prompts(E5, None, PromptOptions())
    assert p.roles() == {"default": "query", "query": "query", "document": "passage"}


def test_a_model_default_prompt_is_kept_for_every_use_without_its_own() -> None:
    p = resolve_prompts({"s2s": "sim: "}, "s2s", PromptOptions())
    assert p.roles() == {"default": "s2s", "query": "s2s", "document": "s2s"}


def test_a_model_without_prompts_gets_none() -> None:
    p = resolve_prompts({}, None, PromptOptions())
    assert p.roles() == {"default": None, "query": None, "document": None}
    assert p.apply(["x"]) == ["x"]


def test_options_add_replace_remove_prompts_and_pick_names() -> None:
    opts = PromptOptions(
        prompts={"query": "q: ", "passage": "", "doc": "d: "},
        default_prompt_name="none",
        document_prompt_name="doc",
    )
    p = resolve_prompts(E5, None, opts)
    assert dict(p.prompts) == {"query": "q: ", "doc": "d: "}
    assert p.roles() == {"default": None, "query": "query", "document": "doc"}
    with pytest.raises(ValueError, match="--query-prompt-name 'nope'"):
        resolve_prompts(E5, None, PromptOptions(query_prompt_name="nope"))


def test_cli_options_parse_name_equals_text(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_prompt_arguments(parser)
    args = parser.parse_args(
        ["--prompt", "query=query: ", "--prompt", "x=a=b", "--document-prompt-name", "x"]
    )
    opts = prompt_options(args)
    assert opts.prompts == {"query": "query: ", "x": "a=b"}
    assert opts.document_prompt_name == "x" and opts.query_prompt_name is None
    with pytest.raises(ValueError, match="NAME=TEXT"):
        prompt_options(parser.parse_args(["--prompt", "novalue"]))


def test_prompts_are_read_from_the_sentence_transformers_config(tmp_path: Path) -> None:
    assert read_st_prompts(str(tmp_path)) == ({}, None)
    (tmp_path / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": E5, "default_prompt_name": None, "similarity_fn_name": "cosine"})
    )
    assert read_st_prompts(str(tmp_path)) == (E5, None)
