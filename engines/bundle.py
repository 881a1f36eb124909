"""The bundle: the one directory a device needs to score audio (``model.json`` + ONNX + embeddings).

``model.json`` is a versioned pydantic schema with ``extra="forbid"`` and is validated on every
load, because a bundle is copied by hand onto devices: a half-copied directory, a file edited by
mistake or a bundle from a newer edge-asd must fail at start-up with a message saying which file
is wrong, not as a shape error deep inside inference. Every ONNX and embeddings file is listed
with its sha256 and checked on load. Embeddings are loaded with ``allow_pickle=False``: the
device never unpickles anything.

numpy + pydantic only: this module runs on the Jetson.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_asd.core.constants import EMBEDDING_DIM
from engines.errors import BundleError

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "edge-asd-bundle"
SCHEMA_VERSION = 1
MODEL_JSON = "model.json"
MODEL_ONNX = "model.onnx"
MODEL_CPU_ONNX = "model_cpu.onnx"
MODEL_CPU_LOGMEL_ONNX = "model_cpu_logmel.onnx"
"""Optional (bundles exported since issue 13): the CPU graph without its front end, inputs
``audio`` and ``logmel`` [batch, 128, 313]; the device's streaming numpy front end fills the
log-mel. Older bundles lack it and run ``model_cpu.onnx``; readers that predate it ignore it."""
LOGMEL_INPUT_NAME = "logmel"
EMBEDDINGS_DIR = "embeddings"
ENGINES_DIR = "engines"

ScoreMode = Literal["ce", "knn", "ensemble"]
_EMBEDDING_NAME = re.compile(r"^embeddings/class_(\d{3,})\.npy$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScoreConfig(_Strict):
    """How one anomaly score per window is made from the model outputs."""

    mode: ScoreMode = "ce"
    knn_k: int = Field(1, ge=1)


class ClassCalibration(_Strict):
    """Per-class threshold and the held-out normal statistics it came from (thresholds.json)."""

    threshold: float = Field(gt=0, allow_inf_nan=False)
    """Finite and positive: a NaN threshold would compare false with every score, so the
    stream would never alert (every score is >= 0)."""
    fit: dict[str, Any] | None = None
    quantiles: dict[str, float] = Field(default_factory=dict)
    n: int = Field(0, ge=0)
    reference: dict[str, list[float]] = Field(default_factory=dict)


class Thresholds(_Strict):
    """The calibration block of a run (``RUN/thresholds.json``) as stored in the bundle."""

    score: ScoreMode
    false_alarm_rate: float | None = None
    knn_k: int | None = Field(None, ge=1)
    classes: dict[str, ClassCalibration]


class ModelInfo(_Strict):
    arch: str
    num_classes: int = Field(ge=1)
    s: float
    m: float
    loss: str = "noisy-arcmix"
    embedding_dim: int = EMBEDDING_DIM


class OnnxInfo(_Strict):
    """What was exported: the opset, the precision of ``model.onnx`` and the I/O signature."""

    opset: int
    precision: Literal["fp16", "fp32"]
    cpu_opset: int
    input_name: str = "audio"
    output_names: list[str] = Field(default_factory=lambda: ["scores", "embedding"])


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class BundleManifest(_Strict):
    """The schema of ``model.json`` (version 1)."""

    format: Literal["edge-asd-bundle"] = BUNDLE_FORMAT
    schema_version: Literal[1] = SCHEMA_VERSION
    edge_asd_version: str
    created: str
    classes: list[str] = Field(min_length=1)
    sample_rate: int = Field(gt=0)
    window_samples: int = Field(gt=0)
    frontend: dict[str, Any]
    model: ModelInfo
    score: ScoreConfig
    thresholds: Thresholds | None = None
    thresholds_note: str | None = None
    training: dict[str, Any] = Field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    onnx: OnnxInfo
    files: dict[str, FileEntry]

    @model_validator(mode="after")
    def _consistent(self) -> BundleManifest:
        if len(self.classes) != self.model.num_classes:
            raise ValueError(
                f"{len(self.classes)} class names but model.num_classes is {self.model.num_classes}"
            )
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("class names are not unique")
        if self.thresholds is not None:
            unknown = sorted(set(self.thresholds.classes) - set(self.classes))
            if unknown:
                raise ValueError(f"thresholds for unknown classes {unknown}")
        for required in (MODEL_ONNX, MODEL_CPU_ONNX):
            if required not in self.files:
                raise ValueError(f"files lists no {required}")
        for name in self.files:
            if name.startswith("/") or ".." in Path(name).parts:
                raise ValueError(f"file entry {name!r} leaves the bundle directory")
        if self.score.mode != "ce":
            missing = [i for i in range(len(self.classes)) if embeddings_name(i) not in self.files]
            if missing:
                raise ValueError(
                    f"score mode {self.score.mode} needs embeddings for every class; missing class indices {missing}"
                )
        if self.score.mode == "ensemble":
            if self.thresholds is None:
                raise ValueError("score mode ensemble needs the thresholds block (its per-class references)")
            for name, cal in self.thresholds.classes.items():
                if not cal.reference.get("ce") or not cal.reference.get("knn"):
                    raise ValueError(f"class {name}: ensemble needs reference ce and knn scores")
        return self


def embeddings_name(class_index: int) -> str:
    """Bundle-relative path of the training-normal embeddings of one class."""
    return f"{EMBEDDINGS_DIR}/class_{class_index:03d}.npy"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed so a large ONNX file does not need to fit twice in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)


@dataclass
class Bundle:
    """A loaded, verified bundle: the manifest plus paths and (lazily) the embeddings."""

    path: Path
    manifest: BundleManifest
    _embeddings: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def num_classes(self) -> int:
        return len(self.manifest.classes)

    @property
    def onnx_path(self) -> Path:
        """The TensorRT graph (conv front end, fp16 backbone when exported so)."""
        return self.path / MODEL_ONNX

    @property
    def cpu_onnx_path(self) -> Path:
        """The onnxruntime graph (STFT front end, fp32)."""
        return self.path / MODEL_CPU_ONNX

    @property
    def logmel_onnx_path(self) -> Path | None:
        """The CPU graph with a log-mel input, or None for a bundle exported without it."""
        return self.path / MODEL_CPU_LOGMEL_ONNX if MODEL_CPU_LOGMEL_ONNX in self.manifest.files else None

    @property
    def graphs(self) -> dict[str, str]:
        """Each ONNX graph of the bundle and where its log-mel comes from (``conv``, ``stft``, ``input``)."""
        lowering = self.manifest.frontend.get("lowering")
        known = lowering if isinstance(lowering, dict) else {}
        return {
            name: str(known.get(name, "input" if name == MODEL_CPU_LOGMEL_ONNX else "?"))
            for name in sorted(self.manifest.files)
            if name.endswith(".onnx")
        }

    @property
    def engines_dir(self) -> Path:
        return self.path / ENGINES_DIR

    def sha256(self, relpath: str) -> str:
        return self.manifest.files[relpath].sha256

    def class_index(self, name: str) -> int:
        try:
            return self.manifest.classes.index(name)
        except ValueError:
            raise BundleError(
                f"class {name!r} is not in bundle {self.path} (classes: {', '.join(self.manifest.classes)})"
            ) from None

    def embeddings(self, class_index: int) -> np.ndarray:
        """float32 (N, 128) training-normal embeddings of one class, loaded without pickle."""
        if class_index not in self._embeddings:
            rel = embeddings_name(class_index)
            if rel not in self.manifest.files:
                raise BundleError(
                    f"bundle {self.path} has no embeddings for class {class_index}: re-export the run "
                    "after it wrote RUN/embeddings (the knn score needs them)"
                )
            self._embeddings[class_index] = _load_embeddings(self.path / rel)
        return self._embeddings[class_index]


def _load_embeddings(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise BundleError(f"cannot read embeddings {path}: {err}. Re-export the bundle") from err
    if arr.ndim != 2 or arr.shape[1] != EMBEDDING_DIM or arr.shape[0] == 0:
        raise BundleError(f"embeddings {path} have shape {arr.shape}, expected (N>0, {EMBEDDING_DIM})")
    return np.ascontiguousarray(arr, dtype=np.float32)


def read_manifest(bundle_dir: Path) -> BundleManifest:
    """Parse and validate ``model.json`` without checking the other files."""
    path = Path(bundle_dir) / MODEL_JSON
    if not path.is_file():
        raise BundleError(
            f"{bundle_dir} is not a bundle: {MODEL_JSON} is missing. Create one with `edge-asd export RUN --out DIR`"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{path} is not valid JSON ({err}): the bundle is truncated or corrupt; copy it again") from err
    if isinstance(raw, dict):
        if raw.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{path} is not an edge-asd bundle manifest (format={raw.get('format')!r})")
        if raw.get("schema_version") != SCHEMA_VERSION:
            raise BundleError(
                f"{path} has schema_version {raw.get('schema_version')!r}; this edge-asd reads "
                f"version {SCHEMA_VERSION}: re-export the bundle with this edge-asd version or upgrade edge-asd"
            )
    try:
        return BundleManifest.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or '(top level)'}: {e['msg']}" for e in err.errors()[:5]
        ) + (f"; and {err.error_count() - 5} more" if err.error_count() > 5 else "")
        raise BundleError(
            f"{path} does not match the bundle schema ({problems}): re-export the bundle with this edge-asd version"
        ) from err


def verify_files(bundle_dir: Path, manifest: BundleManifest) -> None:
    """Check that every listed file exists with its recorded size and sha256."""
    for rel, entry in manifest.files.items():
        path = Path(bundle_dir) / rel
        if not path.is_file():
            raise BundleError(f"bundle file {path} is missing: the bundle is incomplete; copy it again")
        size = path.stat().st_size
        if size != entry.bytes:
            raise BundleError(
                f"bundle file {path} has {size} bytes, model.json says {entry.bytes}: it is truncated or "
                "was replaced; copy the bundle again"
            )
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise BundleError(
                f"bundle file {path} has sha256 {digest[:12]}..., model.json says {entry.sha256[:12]}...: "
                "it was modified; copy the bundle again or re-export it"
            )


def load_bundle(bundle_dir: str | Path, verify: bool = True) -> Bundle:
    """Load and validate a bundle directory; ``verify`` also checks every file's sha256."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle directory {bundle_dir} does not exist: check the path")
    manifest = read_manifest(bundle_dir)
    if verify:
        verify_files(bundle_dir, manifest)
    return Bundle(path=bundle_dir, manifest=manifest)


def write_manifest(bundle_dir: Path, manifest: BundleManifest) -> Path:
    """Write ``model.json`` atomically (temp file + rename) so a crash never leaves half a manifest."""
    path = Path(bundle_dir) / MODEL_JSON
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def as_bundle(bundle: Bundle | str | Path) -> Bundle:
    return bundle if isinstance(bundle, Bundle) else load_bundle(bundle)


__all__ = [
    "BUNDLE_FORMAT",
    "EMBEDDINGS_DIR",
    "ENGINES_DIR",
    "LOGMEL_INPUT_NAME",
    "MODEL_CPU_LOGMEL_ONNX",
    "MODEL_CPU_ONNX",
    "MODEL_JSON",
    "MODEL_ONNX",
    "SCHEMA_VERSION",
    "Bundle",
    "BundleManifest",
    "ClassCalibration",
    "FileEntry",
    "ModelInfo",
    "OnnxInfo",
    "ScoreConfig",
    "Thresholds",
    "as_bundle",
    "embeddings_name",
    "file_entry",
    "load_bundle",
    "read_manifest",
    "sha256_file",
    "verify_files",
    "write_manifest",
]
