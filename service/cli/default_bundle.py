"""The default bundle `simsvc serve` builds (once, then cached) when given none.

Model: SIMSVC_MODEL, else all-MiniLM-L6-v2 in the shared folder, else the reference
checkpoint there, else sentence-transformers/all-MiniLM-L6-v2 from the hub. Whitening and
head come from the shared STS-B train split when it is present; with the dev split present
too, the whitening is kept only when it raises dev Spearman (`--whiten auto`: it helps a raw
BERT, it hurts a contrastively trained model such as all-MiniLM-L6-v2).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from service import __version__
from service.errors import BundleError
from service.runtime.bundle import load_bundle
from service.settings import Settings

if TYPE_CHECKING:
    from models.build import BuildOptions

log = logging.getLogger("simsvc")

SHARED_MODELS = ("models/all-MiniLM-L6-v2", "models/refbert-en-L6-H384")
"""Checkpoints in the shared folder, in order of preference."""
HUB_FALLBACK = "sentence-transformers/all-MiniLM-L6-v2"
STS_TRAIN = "data/stsb-en/train.tsv"
STS_DEV = "data/stsb-en/dev.tsv"


def default_model(settings: Settings) -> str:
    """The checkpoint the default bundle is built from."""
    if settings.model:
        return settings.model
    for name in SHARED_MODELS:
        if (settings.shared / name / "config.json").is_file():
            return str(settings.shared / name)
    return HUB_FALLBACK


def default_bundle_dir(
    settings: Settings, model: str, sts: Path | None, dev: Path | None = None
) -> Path:
    """Cache location keyed by the model, the fit and judging data and this version."""
    key = hashlib.sha256(f"{model}|{sts}|{dev}|{__version__}".encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model).name if Path(model).exists() else model)
    return settings.cache_dir / "bundles" / f"{slug}-{key}"


def cached_bundle(
    options: BuildOptions,
    say: Callable[[str], None] = log.info,
    before_build: Callable[[], None] = lambda: None,
) -> Path:
    """The bundle at `options.out` when a usable one is there, else built there first
    (replacing whatever is there). `before_build` runs only when a build is due, so a
    cached bundle needs no build extra. The default bundle, the benchmarks and the tests'
    cached bundles all come through here."""
    target = options.out
    if (target / "manifest.json").is_file():
        try:
            load_bundle(target)
            say(f"using cached bundle {target}")
            return target
        except (BundleError, OSError, ValueError) as exc:
            say(f"cached bundle {target} is unusable ({exc}); rebuilding")
    before_build()
    from models.build import build_bundle

    build_bundle(replace(options, force=True), say)
    return target


def _require_build_extra() -> None:
    try:
        from models.export_onnx import require_build_extra

        require_build_extra()
    except ImportError as exc:
        raise SystemExit(
            "no model bundle given and none can be built here: "
            f"{exc}.\nEither install the build extra (pip install 'simsvc[build]'), or pass "
            "--bundle DIR / set SIMSVC_BUNDLE to a bundle made by `simsvc build`."
        ) from exc


def ensure_default_bundle(settings: Settings, say: Callable[[str], None] = log.info) -> Path:
    """Return a cached default bundle, building it first if needed."""
    from models.build import BuildOptions

    model = default_model(settings)
    sts, dev = settings.shared / STS_TRAIN, settings.shared / STS_DEV
    sts_file = sts if sts.is_file() else None
    dev_file = dev if sts_file and dev.is_file() else None
    target = default_bundle_dir(settings, model, sts_file, dev_file)
    options = BuildOptions(
        model=model,
        out=target,
        whiten_on=[sts_file] if sts_file else [],
        whiten="auto" if dev_file else "fit",
        eval_on=[dev_file] if dev_file else [],
        head_pairs=sts_file,
        threads=settings.threads,
    )

    def announce() -> None:
        _require_build_extra()
        say(
            f"building the default bundle from {model} "
            f"({'whitening + head from ' + str(sts_file) if sts_file else 'no fit data found'}"
            f"{', whitening judged on ' + str(dev_file) if dev_file else ''}) "
            f"into {target}; this happens once"
        )

    try:
        return cached_bundle(options, say, before_build=announce)
    except OSError as exc:
        raise SystemExit(
            f"cannot build the default bundle from {model}: {exc}\n"
            "Set SIMSVC_MODEL to a local checkpoint directory or a reachable hub id, or "
            "SIMSVC_SHARED to the folder holding models/all-MiniLM-L6-v2, or pass --bundle."
        ) from exc
