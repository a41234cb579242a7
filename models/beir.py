"""BEIR retrieval sets as plain Python: queries, qrels and corpus lines (no torch needed).

Read by the retrieval commands (`simsvc index`, `evaluate-retrieval`, `tune-search`), by
fine-tuning on BEIR pairs and by the benchmarks, so a runtime install can read them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def to_document(obj: Any) -> dict[str, Any]:
    """A service document from a JSONL object: `{"id", "text", "metadata"}` as it is, or a
    BEIR corpus line (`_id`, `title`, `text`) with the title put before the text."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if "id" not in obj and "_id" in obj:
        title = str(obj.get("title") or "").strip()
        text = " ".join(p for p in (title, str(obj.get("text") or "").strip()) if p)
        metadata = {**(obj.get("metadata") or {}), **({"title": title} if title else {})}
        return {"id": str(obj["_id"]), "text": text, "metadata": metadata}
    return obj


def read_beir_queries(path: Path) -> dict[str, str]:
    """BEIR queries.jsonl: `{"_id", "text"}` per line."""
    out: dict[str, str] = {}
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                obj = orjson.loads(line)
                out[str(obj["_id"])] = str(obj["text"])
    return out


def read_beir_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR qrels TSV: a header, then `query-id<TAB>corpus-id<TAB>score`."""
    out: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            parts = line.rstrip("\n").split("\t")
            if n == 0 and not parts[-1].lstrip("-").isdigit():
                continue  # the header
            if len(parts) >= 3:
                out.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return out
