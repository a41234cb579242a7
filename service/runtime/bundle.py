"""The model bundle: the one contract between the offline pipeline and the service.

A directory with `manifest.json`, `model.onnx`, `tokenizer.json`, `whitening.npz`, `head.json`
when a head was trained, and `cross.onnx`, `cross_tokenizer.json`, `cross_calibration.json`
when it carries a cross-encoder, `reranker.onnx` and `reranker_tokenizer.json` when it carries
a relevance reranker. The manifest records where everything came from and the
sha256 of every file; `load_bundle` refuses a bundle whose hashes or dims disagree.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from service.errors import BundleError
from service.runtime.head import Calibration, PairHead
from service.runtime.prompts import Prompts
from service.runtime.types import POOLINGS
from service.runtime.whitening import Whitening

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
WHITENING_FILE = "whitening.npz"
HEAD_FILE = "head.json"
CROSS_MODEL_FILE = "cross.onnx"
CROSS_TOKENIZER_FILE = "cross_tokenizer.json"
CROSS_CALIBRATION_FILE = "cross_calibration.json"
RERANKER_MODEL_FILE = "reranker.onnx"
RERANKER_TOKENIZER_FILE = "reranker_tokenizer.json"


class SourceInfo(BaseModel):
    """The checkpoint the bundle was exported from."""

    model: str
    model_type: str = "bert"
    architectures: list[str] = Field(default_factory=list)
    pooler: str = "trained"
    """'trained' when the checkpoint has pooler weights, else 'cls' (pooler output = [CLS])."""


class TokenizerInfo(BaseModel):
    """Where the bundle's tokenizer.json came from and what kind it is."""

    model: str
    """The tokenizers model: WordPiece, Unigram (SentencePiece), BPE."""
    source: str
    """'checkpoint': the checkpoint's own tokenizer.json, as it ships; 'transformers': the
    fast tokenizer transformers builds (checkpoints with only vocab.txt or a .model file)."""
    transformers_differs: int = 0
    """Parity texts on which transformers' tokenizer gives other ids than the bundle's (some
    transformers versions rebuild a tokenizer from its class and drop the file's normaliser)."""


class Dims(BaseModel):
    hidden: int
    output: int


class Parity(BaseModel):
    """ONNX against PyTorch on padded batches of mixed lengths, per output."""

    max_abs_diff: float
    min_cosine: float


class WhiteningChoice(BaseModel):
    """`--whiten auto`: dev Spearman x100 with and without the fitted whitening."""

    kept: bool
    data: str
    spearman: dict[str, float]
    """raw_cosine and whitened_cosine on `data`."""


class WhiteningInfo(BaseModel):
    fitted: bool
    k: int | None = None
    corpus: str | None = None
    count: int = 0
    anisotropy_before: dict[str, float] | None = None
    anisotropy_after: dict[str, float] | None = None
    auto: WhiteningChoice | None = None
    """Set by `--whiten auto`; with kept false the served transform is the identity."""


class HeadInfo(BaseModel):
    kind: str
    calibration: str
    data: str
    pairs: int
    targets: str
    c: float
    c_path: list[float] = Field(default_factory=list)
    """The head averages the models fitted with these C values (strongest penalty first)."""
    cv_spearman: float | None = None


class QuantizationInfo(BaseModel):
    """What quantization did to the served graph, measured against the fp32 graph."""

    method: str
    min_cosine_vs_fp32: dict[str, float]
    spearman: dict[str, dict[str, dict[str, float]]] = Field(default_factory=dict)
    """Per eval file: {"fp32": {...}, "int8": {...}} Spearman x100 figures."""


class CrossParity(BaseModel):
    """ONNX logits against PyTorch's (eval mode) on padded batches of mixed-length pairs."""

    max_abs_diff: float
    pairs: int
    batches: int
    tokenizer_match: bool


class CrossQuantization(BaseModel):
    """What int8 did to the cross-encoder, measured against its fp32 graph."""

    method: str
    max_abs_diff_vs_fp32: float
    spearman: dict[str, dict[str, float]] = Field(default_factory=dict)
    """Per eval file: {"fp32": x, "int8": y}, Spearman x100 of the cross score."""


class CrossCalibrationInfo(BaseModel):
    """How raw cross scores become probabilities (numbers in cross_calibration.json)."""

    kind: str
    """logistic: the model's own sigmoid; sigmoid: Platt; isotonic."""
    data: str | None = None
    pairs: int = 0
    targets: str | None = None
    spearman: float | None = None
    """Spearman x100 of the raw score on the calibration pairs."""


class CrossInfo(BaseModel):
    """The optional cross-encoder part: a sequence classifier over both texts read at once."""

    source: SourceInfo
    num_labels: int
    labels: list[str]
    score: str
    """'logit' (one label) or 'logit_difference' (two labels: logit[1] - logit[0])."""
    max_length: int
    pad_id: int = 0
    inputs: list[str]
    segment_ids: bool = True
    opset: int
    fusions: dict[str, int] = Field(default_factory=dict)
    parity: CrossParity
    quantization: CrossQuantization | None = None
    calibration: CrossCalibrationInfo
    symmetric: bool = False
    """/v1/similarity reads each pair as (a, b) and (b, a) and averages the logits; the
    calibration and the build's figures were measured so. /rerank and /predict keep the
    order given (a query and a passage are not interchangeable)."""
    card: dict[str, Any] | None = None
    """The fine-tuned checkpoint's card.json (objective, data, dev figures), when it has one."""


class Manifest(BaseModel):
    """Everything the service needs to know about a bundle before loading its files."""

    format_version: int
    source: SourceInfo
    pooling: str
    outputs: list[str]
    dims: Dims
    max_length: int
    pad_id: int = 0
    tokenizer: TokenizerInfo | None = None
    prompts: dict[str, str] = Field(default_factory=dict)
    """Named prompts (sentence-transformers' `prompts`), prepended to a text before
    tokenization; older bundles have none."""
    default_prompt_name: str | None = None
    """The prompt for /v1/embeddings, /embed and POST / when a request names none."""
    query_prompt_name: str | None = None
    """The prompt for both texts of a pair and for search queries; whitening, the head and
    the recorded dev figures were fitted and measured on text so prompted."""
    document_prompt_name: str | None = None
    """The prompt for texts indexed into a collection."""
    inputs: list[str]
    opset: int
    fusions: dict[str, int] = Field(default_factory=dict)
    quantization: QuantizationInfo | None = None
    parity: dict[str, Parity] = Field(default_factory=dict)
    whitening: WhiteningInfo
    head: HeadInfo | None = None
    cross: CrossInfo | None = None
    reranker: CrossInfo | None = None
    """The optional relevance reranker (`simsvc build --reranker`): search `rerank` and
    /rerank use it when present, else the cross-encoder; its card records its training data
    (with the mined negatives) and dev figures (nDCG@10 of reranking)."""
    evaluation: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)
    created_at: str = ""
    versions: dict[str, str] = Field(default_factory=dict)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, manifest: Manifest) -> Manifest:
    """Hash every file in the bundle, then write the manifest atomically (last step of a build)."""
    files = {
        p.name: sha256_file(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    final = manifest.model_copy(update={"files": files})
    tmp = directory / (MANIFEST + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(final.model_dump_json(indent=1))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / MANIFEST)
    return final


def read_manifest(directory: Path) -> Manifest:
    """Parse the manifest, with a clear error when it is missing or malformed."""
    path = directory / MANIFEST
    if not path.is_file():
        raise BundleError(f"{directory} is not a model bundle: {MANIFEST} is missing")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as exc:
        raise BundleError(f"{path} is not a valid bundle manifest: {exc}") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format {manifest.format_version}, this service reads "
            f"{FORMAT_VERSION}; rebuild the bundle with this version's `simsvc build`"
        )
    return manifest


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its manifest and the small artefacts loaded into memory."""

    directory: Path
    manifest: Manifest
    whitening: Whitening
    head: PairHead | None
    cross_calibration: Calibration | None = None

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE

    @property
    def cross_model_path(self) -> Path:
        return self.directory / CROSS_MODEL_FILE

    @property
    def cross_tokenizer_path(self) -> Path:
        return self.directory / CROSS_TOKENIZER_FILE

    @property
    def reranker_model_path(self) -> Path:
        return self.directory / RERANKER_MODEL_FILE

    @property
    def reranker_tokenizer_path(self) -> Path:
        return self.directory / RERANKER_TOKENIZER_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / TOKENIZER_FILE

    @property
    def prompts(self) -> Prompts:
        """The manifest's prompts and the name each use takes (checked at load)."""
        return manifest_prompts(self.manifest)

    @property
    def sha(self) -> str:
        """Short identity of the bundle: the model file's hash prefix."""
        return self.manifest.files.get(MODEL_FILE, "")[:12]


def manifest_prompts(manifest: Manifest) -> Prompts:
    """The manifest's prompt fields as the runtime's `Prompts`."""
    return Prompts(
        prompts=dict(manifest.prompts),
        default_name=manifest.default_prompt_name,
        query_name=manifest.query_prompt_name,
        document_name=manifest.document_prompt_name,
    )


def load_bundle(directory: Path, verify_hashes: bool = True) -> Bundle:
    """Read and verify a bundle; raises `BundleError` naming what is wrong."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    required = [MODEL_FILE, TOKENIZER_FILE, WHITENING_FILE] + ([HEAD_FILE] if manifest.head else [])
    if manifest.cross:
        required += [CROSS_MODEL_FILE, CROSS_TOKENIZER_FILE, CROSS_CALIBRATION_FILE]
    if manifest.reranker:
        required += [RERANKER_MODEL_FILE, RERANKER_TOKENIZER_FILE]
    for name in required:
        if not (directory / name).is_file():
            raise BundleError(f"bundle {directory} lacks {name}")
        if name not in manifest.files:
            raise BundleError(f"bundle manifest lists no sha256 for {name}")
    if verify_hashes:
        for name, expected in manifest.files.items():
            path = directory / name
            if not path.is_file():
                raise BundleError(f"bundle {directory} lacks {name} listed in its manifest")
            actual = sha256_file(path)
            if actual != expected:
                raise BundleError(
                    f"bundle file {name} has sha256 {actual[:16]}…, manifest says "
                    f"{expected[:16]}…: the bundle was modified or is corrupt"
                )
    if manifest.pooling not in manifest.outputs or not set(manifest.outputs) <= set(POOLINGS):
        raise BundleError(
            f"bundle pooling {manifest.pooling!r} / outputs {manifest.outputs} are not valid"
        )
    try:
        manifest_prompts(manifest)
    except ValueError as exc:
        raise BundleError(f"bundle prompts are inconsistent: {exc}") from exc
    try:
        whitening = Whitening.load(directory / WHITENING_FILE)
    except (ValueError, KeyError, OSError) as exc:
        raise BundleError(f"bundle whitening cannot be read: {exc}") from exc
    if whitening.dims_in != manifest.dims.hidden or whitening.dims_out != manifest.dims.output:
        raise BundleError(
            f"whitening maps {whitening.dims_in}->{whitening.dims_out} dims, manifest says "
            f"{manifest.dims.hidden}->{manifest.dims.output}"
        )
    head = None
    if manifest.head:
        try:
            head = PairHead.load(directory / HEAD_FILE)
        except (ValueError, KeyError, OSError) as exc:
            raise BundleError(f"bundle head cannot be read: {exc}") from exc
        if head.dims != manifest.dims.output or head.raw_dims != manifest.dims.hidden:
            raise BundleError(
                f"head expects {head.dims}-dim whitened and {head.raw_dims}-dim raw vectors, "
                f"bundle yields {manifest.dims.output} and {manifest.dims.hidden}"
            )
    cross_calibration = None
    if manifest.cross is not None:
        cross_calibration = _load_cross_calibration(directory, manifest.cross)
    return Bundle(
        directory=directory,
        manifest=manifest,
        whitening=whitening,
        head=head,
        cross_calibration=cross_calibration,
    )


def _load_cross_calibration(directory: Path, cross: CrossInfo) -> Calibration:
    """The cross-encoder's calibration, checked against what the manifest says of it."""
    if cross.num_labels not in (1, 2) or len(cross.labels) != cross.num_labels:
        raise BundleError(
            f"cross-encoder has {cross.num_labels} labels {cross.labels}; 1 or 2 are served"
        )
    try:
        calibration = Calibration.from_dict(
            json.loads((directory / CROSS_CALIBRATION_FILE).read_text())
        )
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise BundleError(f"bundle cross-encoder calibration cannot be read: {exc}") from exc
    if calibration.kind != cross.calibration.kind:
        raise BundleError(
            f"{CROSS_CALIBRATION_FILE} holds a {calibration.kind} calibration, manifest says "
            f"{cross.calibration.kind}"
        )
    return calibration
