"""`simsvc build`: checkpoint -> ONNX (with parity) -> whitening -> pair head -> bundle, plus
an optional cross-encoder part (models/build_cross.py) and relevance reranker part
(models/build_reranker.py).

The bundle is assembled in a temporary directory beside the target and moved into place
only when complete, so a failed build never leaves a half-bundle behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from itertools import islice
from pathlib import Path

import numpy as np

from models.build_cross import CrossBuild, CrossOptions, build_cross
from models.build_fit import CachedEncoder, HeadData, fit_texts, is_pair_file
from models.build_reranker import build_reranker
from models.datasets import read_pairs
from models.evaluate import cosine_spearman, encode_pair_set, evaluate_pairs
from models.export_onnx import (
    PARITY_TEXTS,
    check_parity,
    export_onnx,
    load_checkpoint,
    tokenizer_model,
)
from models.optimize import QUANTIZATIONS, fuse_graph, quantization_method, quantize_int8
from models.prompts import PromptOptions, read_st_prompts, resolve_prompts
from service.runtime.bundle import (
    FORMAT_VERSION,
    HEAD_FILE,
    MODEL_FILE,
    WHITENING_FILE,
    Bundle,
    Dims,
    HeadInfo,
    Manifest,
    QuantizationInfo,
    SourceInfo,
    TokenizerInfo,
    WhiteningChoice,
    WhiteningInfo,
    load_bundle,
    write_manifest,
)
from service.runtime.encoder import EncoderCore, OnnxEncoder, encode_stream, encode_texts
from service.runtime.head import make_views
from service.runtime.prompts import PromptedEncoder
from service.runtime.stats import anisotropy
from service.runtime.types import POOLINGS
from service.runtime.whitening import Whitening, WhiteningAccumulator

log = logging.getLogger("simsvc.build")
ANISOTROPY_SAMPLE = 10_000


@dataclass
class BuildOptions:
    """Everything `simsvc build` takes."""

    model: str
    out: Path
    pooling: str = "auto"
    whiten_on: list[Path] = field(default_factory=list)
    whiten_dim: int | None = None
    whiten: str = "fit"
    """fit: serve the whitening fitted on `whiten_on`; auto: only if it raises the mean
    Spearman of the cosine on the `eval_on` pairs."""
    head_pairs: Path | list[Path] | None = None
    """One labelled pair file or several (each file's scale mapped onto [0, 1] on its own)."""
    head: str = "lr"
    calibration: str | None = None
    max_length: int | None = None
    opset: int = 17
    optimize: bool = True
    quantize: str | None = None
    eval_on: list[Path] = field(default_factory=list)
    threads: int = 0
    force: bool = False
    parity_min_cosine: float = 0.99999
    cross_model: str | None = None
    cross_calibrate_on: Path | None = None
    cross_calibration: str = "sigmoid"
    cross_max_length: int | None = None
    cross_parity_max_diff: float = 1e-4
    cross_symmetric: bool = True
    reranker: str | None = None
    """A relevance reranker checkpoint (`finetune --objective rerank`): search rerank and
    /rerank use it."""
    reranker_max_length: int | None = None
    prompts: PromptOptions = field(default_factory=PromptOptions)
    """The model's prompts (config_sentence_transformers.json) and the name each use takes."""
    fit_sample: int | None = None
    """Fit on at most this many pairs of each pair file (lines of a text corpus), a seeded
    sample shared by the whitening and the head; None: all of them."""

    @property
    def head_files(self) -> list[Path]:
        if self.head_pairs is None:
            return []
        return [self.head_pairs] if isinstance(self.head_pairs, Path) else list(self.head_pairs)


def _texts(files: list[Path], cap: int | None = None) -> Iterator[str]:
    for f in files:
        yield from fit_texts(f, cap)


def fit_whitening(
    encoder: EncoderCore,
    pooling: str,
    files: list[Path],
    k: int | None,
    say: Callable[[str], None],
    cap: int | None = None,
) -> tuple[Whitening, WhiteningInfo]:
    """Accumulate mean and covariance chunk by chunk over the corpus, then fit W_k."""
    acc = WhiteningAccumulator(encoder.dims)
    sample: list[np.ndarray] = []
    kept = 0
    for _chunk, vectors in encode_stream(encoder, _texts(files, cap)):
        acc.update(vectors[pooling])
        if kept < ANISOTROPY_SAMPLE:
            take = vectors[pooling][: ANISOTROPY_SAMPLE - kept]
            sample.append(take)
            kept += len(take)
        say(f"whitening: {acc.count} texts encoded")
    whitening = acc.fit(k)
    raw = np.concatenate(sample)
    info = WhiteningInfo(
        fitted=True,
        k=whitening.dims_out,
        corpus=", ".join(f.name for f in files),
        count=acc.count,
        anisotropy_before={k_: round(v, 4) for k_, v in anisotropy(raw).items()},
        anisotropy_after={k_: round(v, 4) for k_, v in anisotropy(whitening.apply(raw)).items()},
    )
    return whitening, info


def agreement(a: EncoderCore, b: EncoderCore, texts: list[str]) -> dict[str, float]:
    """Min cosine per output between two encoders of the same model on the same texts."""
    va, vb = encode_texts(a, texts), encode_texts(b, texts)
    out = {}
    for name in a.outputs:
        x, y = va[name], vb[name]
        cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-12)
        out[name] = round(float(cos.min()), 6)
    return out


def choose_whitening(
    encoder: EncoderCore,
    pooling: str,
    whitening: Whitening,
    info: WhiteningInfo,
    eval_on: list[Path],
    say: Callable[[str], None],
) -> tuple[Whitening, WhiteningInfo]:
    """`--whiten auto`: keep the fitted whitening only if it raises the dev Spearman of the
    cosine (mean over the eval files); the manifest records both figures and the choice."""
    figures = []
    for f in eval_on:
        pairs = read_pairs(f)
        raw, ia, ib = encode_pair_set(encoder, pooling, pairs)
        figures.append(cosine_spearman(raw, whitening, ia, ib, pairs.scores()))
    mean = {k: round(float(np.mean([f[k] for f in figures])), 2) for k in figures[0]}
    kept = mean["whitened_cosine"] > mean["raw_cosine"]
    choice = WhiteningChoice(kept=kept, data=", ".join(f.name for f in eval_on), spearman=mean)
    say(
        f"whiten auto: raw cosine {mean['raw_cosine']}, whitened {mean['whitened_cosine']} on "
        f"{choice.data}: {'kept' if kept else 'dropped (identity served)'}"
    )
    if kept:
        return whitening, info.model_copy(update={"auto": choice})
    return Whitening.identity(encoder.dims), info.model_copy(
        update={"fitted": False, "k": None, "auto": choice}
    )


def evaluate_into(
    manifest: Manifest,
    bundle: Bundle,
    eval_on: list[Path],
    encoders: tuple[EncoderCore, EncoderCore],
    cross: CrossBuild | None,
    say: Callable[[str], None],
) -> None:
    """Record dev figures in the manifest; with int8, the fp32 graphs' figures beside them."""
    encoder, fp32_encoder = encoders
    quantization = manifest.quantization
    for f in eval_on:
        pairs = read_pairs(f)
        figures = evaluate_pairs(bundle, pairs, encoder, cross=cross.core if cross else None)
        manifest.evaluation[f.name] = figures
        say(f"evaluation on {f.name}: {figures['spearman']}")
        if quantization is None:
            continue
        fp32 = evaluate_pairs(
            bundle, pairs, fp32_encoder, cross=cross.fp32_core if cross else None
        )["spearman"]
        say(f"the same with the fp32 graphs: {fp32}")
        crossed = ("cross_score", "cross_probability")
        quantization.spearman[f.name] = {
            "fp32": {k: v for k, v in fp32.items() if k not in crossed},
            "int8": {k: v for k, v in figures["spearman"].items() if k not in crossed},
        }
        if cross is not None and cross.info.quantization is not None:
            cross.info.quantization.spearman[f.name] = {
                "fp32": fp32["cross_score"],
                "int8": figures["spearman"]["cross_score"],
            }


def _warm_texts(opts: BuildOptions, head_data: HeadData | None) -> list[str]:
    """Every distinct text the fitting and judging read from pair files (a text corpus is
    streamed by the whitening instead: it may not fit in memory)."""
    texts: dict[str, None] = {}
    for f in opts.whiten_on:
        if is_pair_file(f):
            texts.update(dict.fromkeys(fit_texts(f, opts.fit_sample)))
    if head_data is not None:
        texts.update(dict.fromkeys(head_data.sentences()))
    for f in opts.eval_on:
        texts.update(dict.fromkeys(read_pairs(f).sentences()))
    return list(texts)


def fit_head(
    encoder: EncoderCore,
    pooling: str,
    whitening: Whitening,
    data: HeadData,
    opts: BuildOptions,
    work: Path,
    say: Callable[[str], None],
) -> HeadInfo:
    """Train the pair head on the (whitened) views of the pairs and save it into the bundle."""
    from models.train_head import train_head

    say(f"head: encoding {data.count} pairs from {data.names}")
    sentences = data.sentences()
    raw = encode_texts(encoder, sentences)[pooling]
    ia, ib = data.indices({s: i for i, s in enumerate(sentences)})
    mark = time.time()
    head, facts = train_head(
        make_views(raw, whitening, ia, ib),
        data.targets(),
        kind=opts.head,
        calibration=opts.calibration,
        binary=data.binary,
    )
    head.save(work / HEAD_FILE)
    say(
        f"head: C={facts['c']}, cross-validated Spearman {facts['cv_spearman']} "
        f"(trained in {time.time() - mark:.0f} s)"
    )
    return HeadInfo(
        kind=opts.head,
        calibration=facts["calibration"],
        data=data.names,
        pairs=data.count,
        targets=data.describe_targets(),
        c=facts["c"],
        c_path=facts["c_path"],
        cv_spearman=facts["cv_spearman"],
    )


def build_bundle(opts: BuildOptions, say: Callable[[str], None] = log.info) -> Manifest:
    """Build a complete, verified bundle at `opts.out`."""
    import onnxruntime
    import torch
    import transformers

    if opts.out.exists() and not opts.force:
        raise FileExistsError(f"{opts.out} exists; pass --force to replace it")
    if opts.whiten not in ("fit", "auto"):
        raise ValueError(f"--whiten must be fit or auto, got {opts.whiten!r}")
    if opts.whiten == "auto" and not (opts.whiten_on and opts.eval_on):
        raise ValueError("--whiten auto needs --whiten-on (to fit) and --eval-on (to judge)")
    if opts.cross_model is None and opts.cross_calibrate_on is not None:
        raise ValueError("--cross-calibrate-on needs --cross-model")
    started = time.time()
    say(f"loading {opts.model}")
    ckpt = load_checkpoint(opts.model)
    pooling = opts.pooling if opts.pooling != "auto" else (ckpt.st_pooling or "first_last_avg")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS} or auto, got {pooling!r}")
    max_length = opts.max_length or min(ckpt.st_max_length or 512, ckpt.max_positions, 512)
    if not 8 <= max_length <= ckpt.max_positions:
        raise ValueError(f"max length must be in 8..{ckpt.max_positions}, got {max_length}")
    prompts = resolve_prompts(*read_st_prompts(opts.model), opts.prompts)
    query_prompt = prompts.text(None, "query")
    if prompts.prompts:
        say(f"prompts {dict(prompts.prompts)}, by use {prompts.roles()}")

    opts.out.parent.mkdir(parents=True, exist_ok=True)
    work = opts.out.parent / f".{opts.out.name}.building-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        say(f"exporting to ONNX (opset {opts.opset})")
        inputs = export_onnx(ckpt, work, opts.opset)
        model_path = work / MODEL_FILE
        fusions: dict[str, int] = {}
        if opts.optimize:
            plain = work / ".export.onnx"
            os.replace(model_path, plain)
            try:
                fusions = fuse_graph(plain, model_path, ckpt.heads, ckpt.hidden)
                say(f"fused: {fusions}")
            except Exception as exc:  # noqa: BLE001 - an unfusable graph still serves
                say(f"graph fusion skipped ({type(exc).__name__}: {exc}); serving the plain export")
                os.replace(plain, model_path)
            plain.unlink(missing_ok=True)

        def encoder_for(path: Path) -> OnnxEncoder:
            return OnnxEncoder(
                path, work / "tokenizer.json", max_length, pad_id=ckpt.pad_id, threads=opts.threads
            )

        encoder = encoder_for(model_path)
        per_file = max(4, 24 // max(1, len(opts.whiten_on)))  # every language fitted on
        parity_texts = list(PARITY_TEXTS) + [
            t for f in opts.whiten_on for t in islice(fit_texts(f, None), per_file)
        ]
        if query_prompt:
            parity_texts += [query_prompt + t for t in parity_texts[:4]]
        parity, tokenizer_match, hf_differs = check_parity(ckpt, encoder, parity_texts)
        worst = min(p.min_cosine for p in parity.values())
        say(f"parity: min cosine {worst:.7f}, tokenizer match {tokenizer_match}")
        if hf_differs:
            say(
                f"transformers' tokenizer gives other ids on {hf_differs} of {len(parity_texts)} "
                "parity texts; the bundle serves the checkpoint's tokenizer.json"
            )
        if worst < opts.parity_min_cosine or not tokenizer_match:
            raise RuntimeError(
                f"ONNX parity failed: min cosine {worst:.7f} (need {opts.parity_min_cosine}), "
                f"tokenizer match {tokenizer_match}"
            )
        fp32_encoder, quantization = encoder, None
        if opts.quantize in QUANTIZATIONS:
            fp32_path = work / ".model.fp32.onnx"  # dot-files stay out of the bundle
            os.replace(model_path, fp32_path)
            quantize_int8(fp32_path, model_path, QUANTIZATIONS[opts.quantize])
            fp32_encoder, encoder = encoder_for(fp32_path), encoder_for(model_path)
            quantization = QuantizationInfo(
                method=quantization_method(opts.quantize),
                min_cosine_vs_fp32=agreement(encoder, fp32_encoder, parity_texts),
            )
            say(f"int8: min cosine vs fp32 {quantization.min_cosine_vs_fp32}")
        elif opts.quantize is not None:
            raise ValueError(f"unknown quantization {opts.quantize!r}: {list(QUANTIZATIONS)}")
        # Whitening, the head and the dev figures see text as pairs are served: query-prompted,
        # each distinct text encoded once (warmed in one pass sorted by length).
        cached = CachedEncoder(encoder)
        served = PromptedEncoder(cached, query_prompt)
        served_fp32 = PromptedEncoder(
            cached if fp32_encoder is encoder else CachedEncoder(fp32_encoder), query_prompt
        )
        head_data = HeadData.read(opts.head_files, opts.fit_sample) if opts.head_files else None
        warm = _warm_texts(opts, head_data)
        if warm:
            mark = time.time()
            encode_texts(served, warm)
            say(f"encoded {len(warm)} distinct texts in {time.time() - mark:.0f} s")

        if opts.whiten_on:
            whitening, winfo = fit_whitening(
                served, pooling, opts.whiten_on, opts.whiten_dim, say, opts.fit_sample
            )
            if opts.whiten == "auto":
                whitening, winfo = choose_whitening(
                    served, pooling, whitening, winfo, opts.eval_on, say
                )
        else:
            if opts.whiten_dim is not None:
                raise ValueError("--whiten-dim needs --whiten-on")
            whitening, winfo = Whitening.identity(encoder.dims), WhiteningInfo(fitted=False)
        whitening.save(work / WHITENING_FILE)

        head_info = None
        if head_data is not None:
            head_info = fit_head(served, pooling, whitening, head_data, opts, work, say)

        cross: CrossBuild | None = None
        if opts.cross_model is not None:
            eval_pairs = [(p.a, p.b) for f in opts.eval_on[:1] for p in read_pairs(f).pairs]
            cross = build_cross(
                CrossOptions(
                    model=opts.cross_model,
                    calibrate_on=opts.cross_calibrate_on,
                    calibration=opts.cross_calibration,
                    max_length=opts.cross_max_length,
                    opset=opts.opset,
                    optimize=opts.optimize,
                    quantize=opts.quantize,
                    threads=opts.threads,
                    parity_max_diff=opts.cross_parity_max_diff,
                    symmetric=opts.cross_symmetric,
                ),
                work,
                say,
                extra_pairs=eval_pairs[:24],
            )

        reranker = None
        if opts.reranker is not None:
            reranker = build_reranker(
                CrossOptions(
                    model=opts.reranker,
                    max_length=opts.reranker_max_length,
                    opset=opts.opset,
                    optimize=opts.optimize,
                    quantize=opts.quantize,
                    threads=opts.threads,
                    parity_max_diff=opts.cross_parity_max_diff,
                ),
                work,
                say,
            )

        manifest = Manifest(
            format_version=FORMAT_VERSION,
            source=SourceInfo(
                model=opts.model if not Path(opts.model).exists() else Path(opts.model).name,
                model_type=ckpt.model_type,
                architectures=ckpt.architectures,
                pooler="trained" if ckpt.pooler_trained else "cls",
            ),
            pooling=pooling,
            outputs=list(POOLINGS),
            dims=Dims(hidden=encoder.dims, output=whitening.dims_out),
            max_length=max_length,
            pad_id=encoder.pad_id,
            tokenizer=TokenizerInfo(
                model=tokenizer_model(ckpt.runtime_tokenizer),
                source=ckpt.tokenizer_source,
                transformers_differs=hf_differs,
            ),
            prompts=dict(prompts.prompts),
            default_prompt_name=prompts.default_name,
            query_prompt_name=prompts.query_name,
            document_prompt_name=prompts.document_name,
            inputs=inputs,
            opset=opts.opset,
            fusions=fusions,
            quantization=quantization,
            parity=parity,
            whitening=winfo,
            head=head_info,
            cross=cross.info if cross else None,
            reranker=reranker,
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            versions={
                "simsvc": package_version("simsvc"),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
        )
        manifest = write_manifest(work, manifest)
        if opts.eval_on:
            mark = time.time()
            evaluate_into(
                manifest, load_bundle(work), opts.eval_on, (served, served_fp32), cross, say
            )
            manifest = write_manifest(work, manifest)
            say(f"dev evaluation in {time.time() - mark:.0f} s")
        say(f"graph runs: {cached.runs} texts encoded, {cached.reused} reused")
        for leftover in work.glob(".*"):
            leftover.unlink()
        load_bundle(work)  # the service's own check, before the bundle is moved into place
        if opts.out.exists():
            shutil.rmtree(opts.out)
        os.replace(work, opts.out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"bundle written to {opts.out} in {time.time() - started:.0f} s")
    return manifest
