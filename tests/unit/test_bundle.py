from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.errors import BundleError
from service.runtime.bundle import load_bundle, read_manifest, write_manifest
from service.runtime.whitening import Whitening


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "b"
    shutil.copytree(tiny_bundle, target)
    return target


def test_a_built_bundle_verifies(bundle_copy: Path) -> None:
    bundle = load_bundle(bundle_copy)
    assert bundle.head is not None and bundle.whitening.dims_out == 24
    assert set(bundle.manifest.files) >= {
        "model.onnx",
        "tokenizer.json",
        "whitening.npz",
        "head.json",
    }


def test_a_modified_file_is_refused(bundle_copy: Path) -> None:
    with open(bundle_copy / "tokenizer.json", "a") as fh:
        fh.write(" ")
    with pytest.raises(BundleError, match=r"tokenizer.json has sha256"):
        load_bundle(bundle_copy)


def test_a_missing_file_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "head.json").unlink()
    with pytest.raises(BundleError, match=r"lacks head.json"):
        load_bundle(bundle_copy)


def test_dims_that_disagree_are_refused(bundle_copy: Path) -> None:
    Whitening.identity(7).save(bundle_copy / "whitening.npz")
    write_manifest(bundle_copy, read_manifest(bundle_copy))  # hashes fine, dims wrong
    with pytest.raises(BundleError, match=r"whitening maps 7->7"):
        load_bundle(bundle_copy)


def test_unknown_format_version_and_garbage_manifest(bundle_copy: Path) -> None:
    data = json.loads((bundle_copy / "manifest.json").read_text())
    data["format_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="format 99"):
        load_bundle(bundle_copy)
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not a valid bundle manifest"):
        load_bundle(bundle_copy)
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest.json is missing"):
        load_bundle(bundle_copy)


def test_whitening_npz_holds_plain_arrays(tiny_bundle: Path) -> None:
    with np.load(tiny_bundle / "whitening.npz", allow_pickle=False) as data:
        assert {k: data[k].dtype.kind for k in data.files} == {"dims_in": "i", "mu": "f", "w": "f"}


def test_a_manifest_from_before_prompts_loads_with_none(bundle_copy: Path) -> None:
    data = json.loads((bundle_copy / "manifest.json").read_text())
    for key in ("tokenizer", "prompts", "default_prompt_name", "query_prompt_name"):
        data.pop(key, None)
    data.pop("document_prompt_name", None)
    (bundle_copy / "manifest.json").write_text(json.dumps(data))
    bundle = load_bundle(bundle_copy)
    assert bundle.manifest.tokenizer is None and bundle.manifest.prompts == {}
    assert bundle.prompts.apply(["a b"]) == ["a b"]
    assert bundle.prompts.apply(["a b"], role="document") == ["a b"]


def test_a_prompt_name_without_its_prompt_is_refused(bundle_copy: Path) -> None:
    data = json.loads((bundle_copy / "manifest.json").read_text())
    data["prompts"] = {"query": "query: "}
    data["document_prompt_name"] = "passage"
    (bundle_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="document prompt name 'passage'"):
        load_bundle(bundle_copy)


def test_the_wordpiece_bundle_records_its_tokenizer(tiny_bundle: Path) -> None:
    manifest = load_bundle(tiny_bundle).manifest
    assert manifest.tokenizer is not None and manifest.tokenizer.model == "WordPiece"
    assert manifest.prompts == {} and manifest.query_prompt_name is None
