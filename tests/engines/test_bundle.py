"""model.json schema and bundle verification (device side: numpy + pydantic, no torch).

The bundle comes from ``artifacts_dir/bundle-random``: exported here when torch is
importable, reused from the main run's cache in the torch-free venv, else the tests skip.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engines.bundle import BundleManifest, load_bundle, read_manifest
from engines.errors import BundleError

pytestmark = pytest.mark.device


@pytest.fixture
def bundle_copy(cached_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(cached_bundle, dst, ignore=shutil.ignore_patterns("engines"))
    return dst


def test_model_json_round_trips(cached_bundle: Path, no_torch_guard) -> None:
    bundle = load_bundle(cached_bundle)
    doc = json.loads((cached_bundle / "model.json").read_text())
    again = BundleManifest.model_validate(json.loads(json.dumps(bundle.manifest.model_dump(mode="json"))))
    assert again == bundle.manifest
    assert again.model_dump(mode="json") == doc
    assert bundle.classes == doc["classes"] and bundle.num_classes == len(doc["classes"])
    assert bundle.manifest.sample_rate == 16000 and bundle.manifest.window_samples == 160000


def test_embeddings_load_without_pickle(cached_bundle: Path) -> None:
    bundle = load_bundle(cached_bundle)
    emb = bundle.embeddings(0)
    assert emb.dtype == np.float32 and emb.ndim == 2 and emb.shape[1] == 128
    with pytest.raises(BundleError, match="class 99"):
        bundle.embeddings(99)


def test_tampered_file_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / "model_cpu.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model_cpu\.onnx has sha256 .* copy the bundle again"):
        load_bundle(bundle_copy)
    load_bundle(bundle_copy, verify=False)  # the manifest alone is still valid


def test_truncated_file_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / "model.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BundleError, match=r"model\.onnx has 1000 bytes.*truncated"):
        load_bundle(bundle_copy)


def test_missing_file_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "embeddings" / "class_001.npy").unlink()
    with pytest.raises(BundleError, match=r"class_001\.npy is missing"):
        load_bundle(bundle_copy)


def test_truncated_model_json_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / "model.json"
    path.write_text(path.read_text()[:200])
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)


def test_schema_violations_are_refused(bundle_copy: Path) -> None:
    path = bundle_copy / "model.json"
    doc = json.loads(path.read_text())
    for mutate, message in (
        (lambda d: d.update(surprise=1), "Extra inputs are not permitted"),
        (lambda d: d.update(schema_version=2), "schema_version 2"),
        (lambda d: d.update(format="something-else"), "not an edge-asd bundle"),
        (lambda d: d["classes"].pop(), "class names but model.num_classes"),
        (lambda d: d["score"].update(mode="magic"), "score"),
        (lambda d: d["files"].pop("model_cpu.onnx"), "model_cpu.onnx"),
        (lambda d: next(iter(d["thresholds"]["classes"].values())).update(threshold=float("nan")), "threshold"),
        (lambda d: next(iter(d["thresholds"]["classes"].values())).update(threshold=-1.5), "threshold"),
    ):
        broken = json.loads(json.dumps(doc))
        mutate(broken)
        path.write_text(json.dumps(broken))
        with pytest.raises(BundleError, match=message):
            read_manifest(bundle_copy)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match=r"model\.json is missing.*edge-asd export"):
        load_bundle(tmp_path)


def test_pickled_embeddings_are_refused(bundle_copy: Path) -> None:
    from engines.bundle import _load_embeddings

    evil = bundle_copy / "evil.npy"
    np.save(evil, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BundleError, match="cannot read embeddings"):
        _load_embeddings(evil)
