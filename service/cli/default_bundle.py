"""The default bundle `simsvc serve` builds (once, then cached) when given none.

Model: SIMSVC_MODEL, else multilingual-e5-small-enzh in the shared folder (English and
Chinese), else all-MiniLM-L6-v2 there (the fast English choice), else the reference
checkpoint there, else intfloat/multilingual-e5-small from the hub. Each model has a recipe:
the multilingual one fits its head on English and Chinese STS-B train and judges the
whitening (`--whiten auto`) on both dev sets; an English one uses the English split only.
The whitening is kept only when it raises dev Spearman (it helps a raw BERT, it hurts a
contrastively trained model).

The build runs in a child process (`python -m service.cli build ...`): torch and
transformers are loaded there and die with it, so the server never holds them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from service import __version__
from service.errors import BundleError
from service.runtime.bundle import load_bundle
from service.settings import Settings

if TYPE_CHECKING:
    from models.build import BuildOptions

log = logging.getLogger("simsvc")

SHARED_MODELS = (
    "models/multilingual-e5-small-enzh",
    "models/all-MiniLM-L6-v2",
    "models/refbert-en-L6-H384",
)
"""Checkpoints in the shared folder, in order of preference."""
HUB_FALLBACK = "intfloat/multilingual-e5-small"
STS_SPLITS = {
    "en": ("data/stsb-en/train.tsv", "data/stsb-en/dev.tsv"),
    "zh": ("data/stsb-zh/train.txt", "data/stsb-zh/dev.txt"),
}
"""Per language: the shared STS-B train split (fit) and dev split (judge, record)."""


@dataclass(frozen=True)
class Recipe:
    """How the default bundle is built from one model."""

    languages: tuple[str, ...]
    """STS-B splits the whitening and head are fitted on and the build is judged on."""
    quantize: str | None = None
    """The graph when SIMSVC_DEFAULT_QUANTIZE does not choose: None (fp32)."""
    fit_sample: int | None = None
    """Pairs per train split the whitening and head are fitted on (a seeded sample)."""


MULTILINGUAL = Recipe(languages=("en", "zh"), fit_sample=2000)
"""fp32 by default: int8 per channel costs 0.2 (English) to 0.4 (Chinese) points of STS-B dev
on e5, the whole margin to sentence-transformers; SIMSVC_DEFAULT_QUANTIZE=int8-channel trades
it for 2-3x the CPU throughput (BENCHMARKS.md)."""
ENGLISH = Recipe(languages=("en",))


def recipe_for(model: str) -> Recipe:
    """The multilingual recipe for multilingual-e5 checkpoints (and the release recipe's
    fine-tuned `simsvc-e5-*`), the English one otherwise."""
    name = Path(model).name.lower()
    return MULTILINGUAL if "multilingual-e5" in name or name.startswith("simsvc-e5") else ENGLISH


def default_model(settings: Settings) -> str:
    """The checkpoint the default bundle is built from: SIMSVC_MODEL, else the release
    recipe's fine-tuned bi-encoder when it is published in the shared folder (`make models`),
    else the first shared checkpoint found, else the hub."""
    from models.release import published_models  # stdlib only at import: no torch

    if settings.model:
        return settings.model
    published = published_models(settings.shared).bi
    if published is not None:
        return str(published)
    for name in SHARED_MODELS:
        if (settings.shared / name / "config.json").is_file():
            return str(settings.shared / name)
    return HUB_FALLBACK


def default_options(settings: Settings) -> BuildOptions:
    """The build of the default bundle: the model's recipe on the shared STS-B splits found."""
    from models.build import BuildOptions

    model = default_model(settings)
    recipe = recipe_for(model)
    train, dev = [], []
    for lang in recipe.languages:
        fit, judge = (settings.shared / p for p in STS_SPLITS[lang])
        if fit.is_file():
            train.append(fit)
            if judge.is_file():
                dev.append(judge)
    judged = bool(train) and len(dev) == len(train)
    from models.release import published_models

    # The release recipe's cross-encoder and reranker, when published beside the model they
    # were trained from (never mixed into a bundle of another SIMSVC_MODEL).
    parts = published_models(settings.shared)
    with_parts = recipe is MULTILINGUAL and not settings.model
    options = BuildOptions(
        model=model,
        out=Path(),
        whiten_on=train,
        whiten="auto" if judged else "fit",
        eval_on=dev if judged else [],
        head_pairs=train or None,
        threads=settings.threads,
        quantize=None if settings.default_quantize == "none" else settings.default_quantize,
        fit_sample=recipe.fit_sample,
        cross_model=str(parts.cross) if with_parts and parts.cross else None,
        reranker=str(parts.reranker) if with_parts and parts.reranker else None,
    )
    return replace(options, out=default_bundle_dir(settings, options))


def default_bundle_dir(settings: Settings, options: BuildOptions) -> Path:
    """Cache location keyed by the model, the recipe, the data and this version."""
    recipe = (
        options.model,
        [str(p) for p in options.whiten_on],
        [str(p) for p in options.eval_on],
        options.quantize,
        options.fit_sample,
        options.cross_model,
        options.reranker,
        __version__,
    )
    key = hashlib.sha256(repr(recipe).encode()).hexdigest()[:10]
    model = options.model
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model).name if Path(model).exists() else model)
    return settings.cache_dir / "bundles" / f"{slug}-{key}"


def build_command(options: BuildOptions) -> list[str]:
    """`simsvc build` arguments that make the bundle `options` describe."""
    args = ["build", "--model", options.model, "--out", str(options.out), "--force"]
    for flag, files in (("--whiten-on", options.whiten_on), ("--eval-on", options.eval_on)):
        for f in files:
            args += [flag, str(f)]
    for f in options.head_files:
        args += ["--head-pairs", str(f)]
    if options.whiten_on:
        args += ["--whiten", options.whiten]
    if options.quantize:
        args += ["--quantize", options.quantize]
    if options.fit_sample is not None:
        args += ["--fit-sample", str(options.fit_sample)]
    if options.cross_model:
        args += ["--cross-model", options.cross_model]
    if options.reranker:
        args += ["--reranker", options.reranker]
    return [*args, "--threads", str(options.threads)]


def cached_bundle(
    options: BuildOptions,
    say: Callable[[str], None] = log.info,
    before_build: Callable[[], None] = lambda: None,
    build: Callable[[BuildOptions], None] | None = None,
) -> Path:
    """The bundle at `options.out` when a usable one is there, else built there first
    (replacing whatever is there). `before_build` runs only when a build is due, so a
    cached bundle needs no build extra. `build` defaults to building in this process.
    The default bundle, the benchmarks and the tests' cached bundles all come through here."""
    target = options.out
    if (target / "manifest.json").is_file():
        try:
            load_bundle(target)
            say(f"using cached bundle {target}")
            return target
        except (BundleError, OSError, ValueError) as exc:
            say(f"cached bundle {target} is unusable ({exc}); rebuilding")
    before_build()
    if build is None:
        from models.build import build_bundle

        build_bundle(replace(options, force=True), say)
    else:
        build(options)
    return target


def build_extra_missing() -> str | None:
    """Why a bundle cannot be built here, or None. Looked up without importing torch, so
    the server process stays lean."""
    for name in ("torch", "transformers", "onnx", "sklearn"):
        if importlib.util.find_spec(name) is None:
            from models.export_onnx import BUILD_EXTRA_HINT

            return f"{BUILD_EXTRA_HINT} ({name} is not installed)"
    return None


def build_in_child(options: BuildOptions, say: Callable[[str], None] = log.info) -> None:
    """Run `simsvc build` in a child process; its output goes to this process's stderr."""
    started = time.time()
    command = [sys.executable, "-m", "service.cli", *build_command(options)]
    done = subprocess.run(command, stdout=sys.stderr, check=False)
    if done.returncode != 0:
        raise OSError(f"`simsvc build` exited with status {done.returncode} (output above)")
    say(f"default bundle built in {time.time() - started:.0f} s")


def ensure_default_bundle(settings: Settings, say: Callable[[str], None] = log.info) -> Path:
    """Return a cached default bundle, building it first (in a child process) if needed."""
    options = default_options(settings)

    def announce() -> None:
        missing = build_extra_missing()
        if missing is not None:
            raise SystemExit(
                f"no model bundle given and none can be built here: {missing}.\n"
                "Either install the build extra (pip install 'simsvc[build]'), or pass "
                "--bundle DIR / set SIMSVC_BUNDLE to a bundle made by `simsvc build`."
            )
        fitted = ", ".join(p.name for p in options.whiten_on)
        judged = ", ".join(p.name for p in options.eval_on)
        say(
            f"building the default bundle from {options.model} "
            f"({'whitening + head from ' + fitted if fitted else 'no fit data found'}"
            f"{', whitening judged on ' + judged if judged else ''}"
            f"{', ' + options.quantize if options.quantize else ''}) "
            f"into {options.out}; this happens once"
        )

    try:
        return cached_bundle(
            options, say, before_build=announce, build=lambda o: build_in_child(o, say)
        )
    except OSError as exc:
        raise SystemExit(
            f"cannot build the default bundle from {options.model}: {exc}\n"
            "Set SIMSVC_MODEL to a local checkpoint directory or a reachable hub id, or "
            "SIMSVC_SHARED to the folder holding models/multilingual-e5-small-enzh, or pass "
            "--bundle."
        ) from exc
