"""The build's prompts: read from the checkpoint's sentence-transformers config, overridden by
`simsvc build` options, resolved into the names the manifest records.

A checkpoint's `config_sentence_transformers.json` may name prompts (`{"query": "query: ",
"passage": "passage: "}`) and a `default_prompt_name`. The bundle records the prompts and the
name each use takes: pairs and search queries the "query" prompt, indexed documents the
"passage" (else "document") prompt, when the model defines those names, else the model's
default. Requests that name no prompt on /v1/embeddings, /embed and POST / get the model's
`default_prompt_name`, else the query prompt: a model trained with prompts reads bare text out
of distribution, and a bare embedding should compare with a pair's. Whitening and the head are
fitted on text with the query prompt (all whitening sources included), since the served pair
scores they shape are computed on text so prompted.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.runtime.prompts import Prompts

ST_CONFIG = "config_sentence_transformers.json"
NO_PROMPT = ("", "none")
"""Values of a --*-prompt-name option that mean: no prompt for that use."""


@dataclass
class PromptOptions:
    """What `simsvc build` takes about prompts; None means: as the model says."""

    prompts: dict[str, str] = field(default_factory=dict)
    """Added to (or replacing) the model's prompts by name; an empty text removes one."""
    default_prompt_name: str | None = None
    query_prompt_name: str | None = None
    document_prompt_name: str | None = None


def read_st_prompts(model: str) -> tuple[dict[str, str], str | None]:
    """The prompts and default prompt name a sentence-transformers checkpoint declares."""
    local = Path(model) / ST_CONFIG
    config: dict[str, Any] | None = None
    if local.is_file():
        config = json.loads(local.read_text())
    elif not Path(model).is_dir():
        try:
            from huggingface_hub import hf_hub_download

            config = json.loads(Path(hf_hub_download(model, ST_CONFIG)).read_text())
        except Exception:  # noqa: BLE001 - the file is optional; any hub failure means absent
            config = None
    if not config:
        return {}, None
    prompts = {str(k): str(v) for k, v in (config.get("prompts") or {}).items()}
    default = config.get("default_prompt_name")
    return prompts, None if default is None else str(default)


def resolve_prompts(
    model_prompts: dict[str, str], model_default: str | None, opts: PromptOptions
) -> Prompts:
    """The bundle's prompts: the model's, overridden by the options, and each use's name."""
    prompts = {k: v for k, v in {**model_prompts, **opts.prompts}.items() if v}
    if model_default is not None and model_default not in prompts:
        model_default = None  # its prompt was removed by an option

    def pick(given: str | None, fallback: str | None, what: str) -> str | None:
        if given is None:
            return fallback
        if given in NO_PROMPT and given not in prompts:
            return None
        if given not in prompts:
            known = ", ".join(sorted(prompts)) or "none"
            raise ValueError(f"--{what}-prompt-name {given!r}: no such prompt (known: {known})")
        return given

    query = pick(opts.query_prompt_name, "query" if "query" in prompts else model_default, "query")
    doc_fallback = next((n for n in ("passage", "document") if n in prompts), model_default)
    document = pick(opts.document_prompt_name, doc_fallback, "document")
    default = pick(opts.default_prompt_name, model_default or query, "default")
    return Prompts(prompts=prompts, default_name=default, query_name=query, document_name=document)


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """The `simsvc build` prompt options (the CLI adds them to its build parser)."""
    parser.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="NAME=TEXT",
        help="add or replace a named prompt (repeatable; NAME= removes one); the model's "
        "config_sentence_transformers.json prompts are read first",
    )
    for use, default in (
        ("default", "the model's default_prompt_name, else the query prompt"),
        ("query", '"query" when the model has it, else its default'),
        ("document", '"passage" (or "document") when the model has it, else its default'),
    ):
        parser.add_argument(
            f"--{use}-prompt-name",
            metavar="NAME",
            help=f"the prompt for {_USES[use]} ('none': no prompt; default: {default})",
        )


_USES = {
    "default": "/v1/embeddings, /embed and POST / when a request names none",
    "query": "pairs and search queries (whitening and the head are fitted with it)",
    "document": "texts indexed into collections",
}


def prompt_options(args: argparse.Namespace) -> PromptOptions:
    """The parsed prompt options, as `build_bundle` takes them."""
    prompts: dict[str, str] = {}
    for item in args.prompt:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--prompt takes NAME=TEXT, got {item!r}")
        prompts[name] = text
    return PromptOptions(
        prompts=prompts,
        default_prompt_name=args.default_prompt_name,
        query_prompt_name=args.query_prompt_name,
        document_prompt_name=args.document_prompt_name,
    )
