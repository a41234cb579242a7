"""Helpers the benchmark scripts share: paths, timing, tables, plots, cached bundles."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"  # ignored: bundles, checkpoints, raw JSON
PLOTS = REPO / "bench" / "plots"  # tracked: the PNGs BENCHMARKS.md shows


def shared_dir() -> Path:
    """The shared models and data (SIMSVC_SHARED, default ../shared beside the repo)."""
    path = Path(os.environ.get("SIMSVC_SHARED") or REPO.parent / "shared")
    if not (path / "models").is_dir():
        raise SystemExit(f"shared folder not found at {path}: set SIMSVC_SHARED")
    return path


def machine() -> str:
    """One line describing the CPU the figures were taken on."""
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call takes."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (readable in a terminal, pasteable into BENCHMARKS.md)."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    return "\n".join([line, sep, *body])


def save_json(name: str, data: Any) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def bar_plot(
    name: str, title: str, groups: Sequence[str], series: Mapping[str, Sequence[float]], ylabel: str
) -> Path | None:
    """Grouped bar chart to bench/plots/NAME.png (skipped when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(groups) + 2), 4))
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        xs = [g + i * width for g in range(len(groups))]
        ax.bar(xs, values, width=width, label=label)
    ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = PLOTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bundle(
    name: str,
    model: str,
    quantize: str | None = None,
    max_length: int = 256,
    pooling: str = "mean",
    threads: int = 0,
) -> Path:
    """A speed-only bundle (no whitening or head), built once into bench/out/bundles."""
    from models.build import BuildOptions
    from service.cli.default_bundle import cached_bundle

    return cached_bundle(
        BuildOptions(
            model=model,
            out=OUT / "bundles" / name,
            pooling=pooling,
            max_length=max_length,
            quantize=quantize,
            threads=threads,
        ),
        say=lambda m: print(f"  [{name}] {m}", flush=True),
    )


def random_checkpoint(name: str, config_dir: Path, seed: int = 0) -> Path:
    """A checkpoint with a real config and tokenizer and random weights (speed only)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    out = OUT / "checkpoints" / name
    if (out / "config.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = AutoModel.from_config(AutoConfig.from_pretrained(str(config_dir)))  # type: ignore[no-untyped-call]
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(config_dir)).save_pretrained(str(out))
    return out
