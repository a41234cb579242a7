"""Files a trained checkpoint takes over from its base, as the base ships them.

- `tokenizer.json`: `tokenizer.save_pretrained` writes what transformers rebuilt, and
  transformers 5 rebuilds XLM-R's tokenizer from its class without the file's NFKC
  normaliser, so a fine-tuned e5 would tokenize other text than its base. The base's own file
  replaces it (the bundle's tokenizer is read from it: `export_onnx.checkpoint_tokenizer`).
  Training reads it too (`training_tokenizer`).
- `config_sentence_transformers.json` (bi-encoders): the prompts the model was trained with
  (`finetune` trains with the query prompt), which `simsvc build` reads into the manifest.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from models.prompts import ST_CONFIG

TOKENIZER_JSON = "tokenizer.json"


def base_file(model: str, name: str) -> Path | None:
    """A file of a local checkpoint folder or a hub checkpoint; None when it has none."""
    local = Path(model) / name
    if local.is_file():
        return local
    if Path(model).is_dir():
        return None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(model, name))
    except Exception:  # noqa: BLE001 - an optional file: any hub failure means absent
        return None


def copy_base_files(model: str, out: Path, prompts: bool) -> list[str]:
    """Copy the base's tokenizer.json (and, with `prompts`, its sentence-transformers
    prompt config) into `out` over what transformers wrote; returns the names copied."""
    copied = []
    for name in (TOKENIZER_JSON, ST_CONFIG) if prompts else (TOKENIZER_JSON,):
        source = base_file(model, name)
        if source is not None and source.resolve() != (out / name).resolve():
            shutil.copyfile(source, out / name)
            copied.append(name)
    return copied


def training_tokenizer(model: str) -> Any:
    """The transformers fast tokenizer of a checkpoint, running the checkpoint's own
    tokenizer.json when it ships one, so training tokenizes as the bundle serves.

    transformers 5 rebuilds XLM-R's tokenizer from its class: on the shared e5 it turns
    full-width punctuation (`：“”！`) and some symbols into <unk>, which the file's NFKC
    normaliser maps to real pieces. The class keeps its specials and pair template
    handling; only the Rust backend is the file's (padding and truncation are set per call).
    """
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{model}: a fast (Rust) tokenizer is needed")
    source = base_file(model, TOKENIZER_JSON)
    if source is not None:
        tokenizer._tokenizer = Tokenizer.from_file(str(source))
    return tokenizer
