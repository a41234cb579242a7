"""The release recipe (`make models`): the three checkpoints the default bundle is built from,
fine-tuned from the multilingual e5 in the shared folder, with their cards and times.

- `simsvc-e5-bi`: cosent on STS-B train, English and Chinese together, dev on both dev sets
  (trained on text with the e5 query prompt, as the bundle serves pairs);
- `simsvc-e5-cross`: the similarity cross-encoder, started from the base e5, same data;
- `simsvc-e5-reranker`: the relevance reranker (`--objective rerank`) on SciFact, its
  train judgements cut (seeded) into train and dev by `split-pairs`.

Each is written under `--out` with its card.json; `release.json` there records the
commands, the seconds each took and the dev figures. Published into the shared folder's
`models/` under these names, the default bundle includes them (`published_models`).

Nothing here imports torch at module level: `published_models` is for the service's CLI.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE = "multilingual-e5-small-enzh"
BI, CROSS, RERANKER = "simsvc-e5-bi", "simsvc-e5-cross", "simsvc-e5-reranker"
"""The folder names of the published checkpoints in the shared `models/` folder."""


@dataclass(frozen=True)
class PublishedModels:
    """The recipe's checkpoints found in a shared folder (None: not published there)."""

    bi: Path | None
    cross: Path | None
    reranker: Path | None


def _checkpoint(path: Path) -> Path | None:
    return path if (path / "config.json").is_file() else None


def published_models(shared: Path) -> PublishedModels:
    """The recipe's checkpoints in `shared/models/` (each a folder with config.json)."""
    models = Path(shared) / "models"
    return PublishedModels(
        bi=_checkpoint(models / BI),
        cross=_checkpoint(models / CROSS),
        reranker=_checkpoint(models / RERANKER),
    )


def recipe(shared: Path, out: Path, epochs: float, device: str) -> list[list[str]]:
    """The `simsvc` commands of the recipe, in order (the last three write the checkpoints)."""
    data, base = shared / "data", str(shared / "models" / BASE)
    en, zh = data / "stsb-en", data / "stsb-zh"
    pairs = [str(en / "train.tsv"), str(zh / "train.txt")]
    dev = [str(en / "dev.tsv"), str(zh / "dev.txt")]
    split = out / "data" / "scifact"
    common = ["--epochs", f"{epochs:g}", "--device", device, "--force", "--no-progress"]
    bi = ["--objective", "cosent", "--pairs", *pairs, "--dev", *dev, "--batch-size", "32"]
    cross = [*bi[:1], "cross", *bi[2:], "--lr", "8e-5"]
    rerank = ["--objective", "rerank", "--pairs", str(split), "--dev", str(split)]
    rerank += ["--batch-size", "8", "--max-length", "384", "--negatives", "7"]
    rerank += ["--rerank-candidates", "20"]
    return [
        ["split-pairs", str(data / "scifact"), "--out", str(out / "data"), "--seed", "0"],
        ["finetune", "--model", base, *bi, "--out", str(out / BI), *common],
        ["finetune", "--model", base, *cross, "--out", str(out / CROSS), *common],
        ["finetune", "--model", base, *rerank, "--out", str(out / RERANKER), *common],
    ]


def run_recipe(shared: Path, out: Path, epochs: float = 2, device: str = "auto") -> dict[str, Any]:
    """Run the recipe's commands (each its own `simsvc` process); write and return
    `out/release.json`."""
    out.mkdir(parents=True, exist_ok=True)
    steps = []
    for command in recipe(shared, out, epochs, device):
        started = time.monotonic()
        code = subprocess.run([sys.executable, "-m", "service.cli", *command]).returncode
        seconds = round(time.monotonic() - started, 1)
        steps.append({"command": "simsvc " + shlex.join(command), "seconds": seconds})
        if code != 0:
            raise SystemExit(f"{command[0]} failed (exit {code}): {steps[-1]['command']}")
    cards = {}
    for name in (BI, CROSS, RERANKER):
        card = json.loads((out / name / "card.json").read_text())
        keys = ("objective", "device", "precision", "epochs", "seconds_per_epoch", "dev_best")
        cards[name] = {k: card.get(k) for k in keys} | {"dev_final": card["dev_curve"][-1]}
    report = {"base": BASE, "epochs": epochs, "steps": steps, "models": cards}
    (out / "release.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.release", description=__doc__)
    parser.add_argument("--shared", type=Path, required=True, help="folder with models/, data/")
    parser.add_argument("--out", type=Path, required=True, help="where the checkpoints go")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    if args.dry_run:
        for command in recipe(args.shared, args.out, args.epochs, args.device):
            print("simsvc " + shlex.join(command))
        return 0
    print(json.dumps(run_recipe(args.shared, args.out, args.epochs, args.device), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
