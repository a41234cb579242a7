"""Prompts, as sentence-transformers and TEI define them: named prefixes put before a text.

Models such as E5 were trained with a prefix on every input ("query: " for sentences to
compare and search queries, "passage: " for indexed documents); text without it reads out of
distribution. The bundle's manifest names the prompts and which one each use takes; this
module is the one place that applies them. The prompt is prepended to the text before
tokenization, so it is counted by the token limit and truncation, as sentence-transformers
counts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from service.errors import ValidationError
from service.runtime.encoder import EncoderCore, Tokenized, WrappedCore

Role = Literal["default", "query", "document"]
"""default: /v1/embeddings, /embed, POST / when no prompt_name is given; query: both sides of
a pair and search queries; document: texts added to a collection."""


@dataclass(frozen=True)
class Prompts:
    """The bundle's named prompts and the name each role uses (None: no prompt)."""

    prompts: Mapping[str, str] = field(default_factory=dict)
    default_name: str | None = None
    query_name: str | None = None
    document_name: str | None = None

    def __post_init__(self) -> None:
        for role, name in self.roles().items():
            if name is not None and name not in self.prompts:
                raise ValueError(
                    f"{role} prompt name {name!r} is not one of the prompts {sorted(self.prompts)}"
                )

    def roles(self) -> dict[str, str | None]:
        """The prompt name each role takes."""
        return {
            "default": self.default_name,
            "query": self.query_name,
            "document": self.document_name,
        }

    def name_for(self, name: str | None, role: Role = "default") -> str | None:
        """The prompt name a request asks for (`name`), else its role's; checked to exist."""
        if name is None:
            return self.roles()[role]
        if name not in self.prompts:
            known = ", ".join(sorted(self.prompts)) or "none"
            raise ValidationError(
                f"unknown prompt_name {name!r}; this model's prompts: {known}", param="prompt_name"
            )
        return name

    def text(self, name: str | None, role: Role = "default") -> str:
        """The prefix for a request's `prompt_name` (None: the role's), '' for no prompt."""
        resolved = self.name_for(name, role)
        return "" if resolved is None else self.prompts[resolved]

    def apply(
        self, texts: Sequence[str], name: str | None = None, role: Role = "default"
    ) -> list[str]:
        """The texts with the prompt prepended: the one function every text route calls
        before tokenizing (`name` is the request's `prompt_name`, None for the role's)."""
        prefix = self.text(name, role)
        return [prefix + t for t in texts] if prefix else list(texts)


class PromptedEncoder(WrappedCore):
    """An `EncoderCore` that prepends a fixed prompt before tokenizing: for offline encoding
    (the build's whitening, head and evaluation) of text the service reads with that prompt.
    Texts given as token ids are taken as they are."""

    def __init__(self, core: EncoderCore, prompt: str) -> None:
        super().__init__(core)
        self._prompt = prompt

    @property
    def prompt(self) -> str:
        return self._prompt

    def tokenize(self, texts: Sequence[str]) -> list[Tokenized]:
        return self._core.tokenize([self._prompt + t for t in texts] if self._prompt else texts)
