"""``edge-asd export``: a trained run -> a self-contained, verified bundle (workstation only, torch).

Two graphs are written because the two targets disagree on what they can run:

* ``model.onnx`` for TensorRT 10.3 (JetPack 6): the front end's STFT is a Conv1d with a
  windowed DFT basis (TensorRT 10.3 cannot parse ONNX ``STFT``). With ``--precision fp16`` the
  precision is *in the graph* (TensorRT 11 removed the FP16 builder flag; strongly typed
  networks take types from the ONNX): the front end (DFT conv, power, mel, log) and the ArcFace
  head stay float32, the backbone runs float16 between explicit ``Cast`` nodes. We get there by
  exporting a wrapper module in which the backbone is a ``.half()`` copy fed ``logmel.half()``
  and ``audio.half()``, and its embedding is cast back with ``.float()``.
* ``model_cpu.onnx`` for onnxruntime on a CPU: float32 with the front end lowered to ONNX
  ``STFT`` (opset >= 17), which onnxruntime runs several times faster than a 2050-channel conv.

Both graphs are checked (``onnx.checker``, the I/O signature, the TensorRT 10.3 op allow-list,
the FP16 typing), simplified with onnxslim, and hashed into ``model.json``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engines.bundle import (
    EMBEDDING_DIM,
    EMBEDDINGS_DIR,
    MODEL_CPU_ONNX,
    MODEL_JSON,
    MODEL_ONNX,
    Bundle,
    BundleManifest,
    ClassCalibration,
    ModelInfo,
    OnnxInfo,
    ScoreConfig,
    Thresholds,
    embeddings_name,
    file_entry,
    load_bundle,
    write_manifest,
)
from engines.errors import ExportError

logger = logging.getLogger(__name__)

Precision = Literal["fp16", "fp32"]
DEFAULT_OPSET = 17
MIN_STFT_OPSET = 17
# TensorRT 10.0-10.3 parse opsets 9..20.
MAX_TRT_OPSET = 20
INPUT_NAME = "audio"
OUTPUT_NAMES = ("scores", "embedding")
_TRACE_BATCH = 2  # > 1 so the tracer cannot specialise the batch dimension to 1

ProgressFn = Callable[[str], None]


def _edge_asd_version() -> str:
    try:
        from importlib.metadata import version

        return version("edge-asd")
    except Exception:  # an uninstalled checkout still exports
        return "0+unknown"


def build_export_module(model: Any, precision: Precision, lowering: str) -> Any:
    """The module that is traced: ``audio -> (scores, embedding)`` with the requested precision.

    The model is deep-copied so the caller's model (its lowering, its dtype) is left untouched.
    For fp16 the backbone is a ``.half()`` copy; the front end and head are the float32
    originals, so the exporter writes ``Cast`` nodes exactly at the two boundaries.
    """
    import torch
    from torch import nn

    if precision not in ("fp16", "fp32"):
        raise ExportError(f"precision must be fp16 or fp32, got {precision!r}")
    fp32 = copy.deepcopy(model).float().eval()
    fp32.frontend.lowering = lowering
    half = copy.deepcopy(fp32).half().eval() if precision == "fp16" else None

    class ExportGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fp32 = fp32
            self.body16 = half

        def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logmel = self.fp32.frontend(audio)
            if self.body16 is not None:
                embedding = self.body16.backbone(audio.half(), logmel.half()).float()
            else:
                embedding = self.fp32.backbone(audio, logmel)
            scores = self.fp32.scores_from_cosine(self.fp32.head_cosine(embedding))
            return scores, embedding

    return ExportGraph().eval()


def export_onnx(
    model: Any,
    path: str | Path,
    *,
    precision: Precision = "fp16",
    lowering: str = "conv",
    opset: int = DEFAULT_OPSET,
    window_samples: int = 160000,
    simplify: bool = True,
    decompose_prelu: bool = False,
) -> Path:
    """Export ``model`` (a ``TASTgramMFN``) to one checked, simplified ONNX file.

    ``decompose_prelu`` rewrites PRelu for onnxruntime's CPU provider (see ``_decompose_prelu``);
    it is for the CPU graph only, TensorRT fuses PRelu natively.
    """
    import onnx
    import torch

    from engines import onnx_checks

    path = Path(path)
    if lowering == "stft" and opset < MIN_STFT_OPSET:
        raise ExportError(f"the STFT lowering needs opset >= {MIN_STFT_OPSET}, got {opset}")
    module = build_export_module(model, precision, lowering)
    dummy = torch.zeros(_TRACE_BATCH, window_samples, dtype=torch.float32)
    dummy[:, ::97] = 0.05  # not all zeros: keeps no branch of the trace degenerate
    dynamic = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    raw = path.with_suffix(".raw.onnx")
    started = time.perf_counter()
    try:
        # The exporter warns that strided Slices (the DFT's real/imaginary halves) are not
        # constant-folded; harmless, and noise in every export's output.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            torch.onnx.export(
                module,
                (dummy,),
                str(raw),
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as err:  # any exporter failure is reported with its cause
        raise ExportError(f"ONNX export of {path.name} ({precision}, {lowering}) failed: {err}") from err
    graph = onnx.load(str(raw))
    raw.unlink(missing_ok=True)
    graph = _fold_static_eyelike(graph)
    if simplify:
        graph = _slim(graph, path.name)
    if decompose_prelu:
        graph = _decompose_prelu(graph)
    where = str(path)
    try:
        onnx.checker.check_model(graph, full_check=True)
    except Exception as err:  # onnx raises several checker error types
        raise ExportError(f"{where} fails onnx.checker: {err}") from err
    num_classes = int(model.config.num_classes)
    onnx_checks.check_signature(graph, where, window_samples, num_classes, EMBEDDING_DIM)
    if lowering == "conv":
        onnx_checks.check_tensorrt_ops(graph, where)
    if precision == "fp16":
        report = onnx_checks.check_fp16_precision(graph, where)
        logger.info(
            "%s: %d float32 front-end nodes, %d float32 head nodes, %d float16 nodes",
            where,
            len(report.front_end),
            len(report.head),
            report.fp16_nodes,
        )
    onnx.save(graph, str(path))
    logger.info("exported %s (%s, %s, opset %d) in %.1f s", path, precision, lowering, opset, time.perf_counter() - started)
    return path


def _fold_static_eyelike(graph: Any) -> Any:
    """Replace ``EyeLike`` nodes whose input shape is static by a constant identity matrix.

    The head builds its (C, C) margin mask with ``torch.eye(cosine.shape[1])``; the tracer
    records that as Shape -> ConstantOfShape -> EyeLike(bool), which onnxruntime has no kernel
    for and which TensorRT would evaluate at run time. C is fixed by the head's weights, so
    the mask is a constant; folding it here keeps both graphs portable.
    """
    import onnx
    from onnx import helper, numpy_helper

    eyes = [n for n in graph.graph.node if n.op_type == "EyeLike"]
    if not eyes:
        return graph
    inferred = onnx.shape_inference.infer_shapes(graph, strict_mode=False, data_prop=True)
    shapes: dict[str, list[int]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    for node in eyes:
        shape = shapes.get(node.input[0])
        if shape is None or len(shape) != 2:
            logger.warning("EyeLike %s has no static 2-D input shape: left in the graph", node.name)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        dtype = attrs.get("dtype", elem.get(node.input[0], onnx.TensorProto.FLOAT))
        value = np.eye(shape[0], shape[1], k=int(attrs.get("k", 0)))
        value = value.astype(helper.tensor_dtype_to_np_dtype(dtype))
        const = helper.make_node(
            "Constant", [], list(node.output), name=f"{node.name or 'EyeLike'}_folded",
            value=numpy_helper.from_array(value),
        )
        index = list(graph.graph.node).index(node)
        graph.graph.node.remove(node)
        graph.graph.node.insert(index, const)
    return graph


def _decompose_prelu(graph: Any) -> Any:
    """Rewrite ``PRelu(x, s)`` with a constant slope as ``Relu(x) * (1 - s) + x * s`` (exact).

    Measured on the 2-core CI CPU (onnxruntime 1.32): its PRelu kernel is about 8x slower than
    a broadcast Mul, took ~38 % of the CPU graph's time, and, having no blocked-layout (NCHWc)
    kernel, forced a layout reorder around every one of them (another ~14 %). Relu, Mul and
    Add fuse into the NCHWc convolutions: the whole graph runs ~25 % faster.
    """
    from onnx import helper, numpy_helper

    inits = {init.name: init for init in graph.graph.initializer}
    nodes = []
    replaced = 0
    for node in graph.graph.node:
        if node.op_type != "PRelu" or node.input[1] not in inits:
            nodes.append(node)
            continue
        slope = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        out = node.output[0]
        graph.graph.initializer.extend(
            [numpy_helper.from_array(slope, f"{out}_slope"), numpy_helper.from_array(1.0 - slope, f"{out}_pos")]
        )
        nodes += [
            helper.make_node("Relu", [node.input[0]], [f"{out}_relu"]),
            helper.make_node("Mul", [f"{out}_relu", f"{out}_pos"], [f"{out}_p"]),
            helper.make_node("Mul", [node.input[0], f"{out}_slope"], [f"{out}_n"]),
            helper.make_node("Add", [f"{out}_p", f"{out}_n"], [out]),
        ]
        replaced += 1
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    used = {name for node in graph.graph.node for name in node.input}
    keep = [init for init in graph.graph.initializer if init.name in used]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(keep)
    logger.debug("decomposed %d PRelu nodes", replaced)
    return graph


def _slim(graph: Any, name: str) -> Any:
    """onnxslim: constant folding and dead-node removal; a failure keeps the unsimplified graph."""
    try:
        import onnxslim

        slimmed = onnxslim.slim(graph)
    except Exception as err:  # simplification is an optimisation, not a requirement
        logger.warning("onnxslim could not simplify %s (%s): keeping the unsimplified graph", name, err)
        return graph
    return slimmed if slimmed is not None else graph


# -- the run directory -------------------------------------------------------------------------


def _read_json(path: Path) -> Any | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ExportError(f"cannot read {path}: {err}. Fix or delete the file") from err


def _summarise(obj: Any, max_list: int = 64, depth: int = 0) -> Any:
    """Keep summary figures of a report and drop long per-clip lists (the bundle stays small)."""
    if depth > 6:
        return None
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            summary = _summarise(value, max_list, depth + 1)
            if summary is not None:
                out[str(key)] = summary
        return out
    if isinstance(obj, list):
        if len(obj) > max_list:
            return None
        return [_summarise(v, max_list, depth + 1) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def training_figures(run_dir: Path) -> dict[str, Any]:
    """The last and the best (lowest validation loss) epoch lines of ``RUN/metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s: skipping a line that is not JSON (a run interrupted mid-write?)", path)
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        return {}
    figures: dict[str, Any] = {"epochs": len(rows), "last": _summarise(rows[-1])}
    key = next((k for k in ("val_loss", "valid_loss", "val/loss") if any(k in r for r in rows)), None)
    if key is not None:
        candidates = [r for r in rows if isinstance(r.get(key), (int, float))]
        if candidates:
            figures["best"] = _summarise(min(candidates, key=lambda r: r[key]))
            figures["best_by"] = key
    return figures


def read_thresholds(run_dir: Path, classes: list[str]) -> Thresholds | None:
    """``RUN/thresholds.json`` as the bundle's thresholds block (unknown keys dropped, with a warning)."""
    doc = _read_json(run_dir / "thresholds.json")
    if doc is None:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), dict):
        raise ExportError(f"{run_dir / 'thresholds.json'} has no 'classes' object: run `edge-asd calibrate-run` again")
    known = set(ClassCalibration.model_fields)
    per_class: dict[str, ClassCalibration] = {}
    for name, entry in doc["classes"].items():
        if name not in classes:
            logger.warning("thresholds.json: class %s is not in the run's classes: dropped", name)
            continue
        dropped = sorted(set(entry) - known)
        if dropped:
            logger.warning("thresholds.json: class %s: keys %s not carried into the bundle", name, dropped)
        if "threshold" not in entry:
            logger.warning("thresholds.json: class %s has no threshold: dropped", name)
            continue
        per_class[name] = ClassCalibration.model_validate({k: v for k, v in entry.items() if k in known})
    return Thresholds(
        score=doc.get("score", "ce"),
        false_alarm_rate=doc.get("false_alarm_rate"),
        knn_k=doc.get("knn_k"),
        classes=per_class,
    )


def frontend_parameters() -> dict[str, Any]:
    """Front-end parameters as recorded in model.json (the device checks sample rate and window)."""
    from trainer import frontend as fe

    return {
        "kind": "log-mel",
        "sample_rate": fe.SAMPLE_RATE,
        "n_fft": fe.N_FFT,
        "win_length": fe.N_FFT,
        "hop_length": fe.HOP,
        "n_mels": fe.N_MELS,
        "window": "hann (periodic)",
        "center": True,
        "pad_mode": "constant",
        "mel_scale": "slaney",
        "mel_norm": "slaney",
        "f_min": 0.0,
        "f_max": fe.SAMPLE_RATE / 2,
        "power": 2.0,
        "db": "10*log10(max(mel, eps))",
        "eps": fe.EPS,
        "basis_scale": fe.BASIS_SCALE,
        "lowering": {MODEL_ONNX: "conv", MODEL_CPU_ONNX: "stft"},
    }


def _copy_embeddings(run_dir: Path, staging: Path, num_classes: int) -> list[str]:
    """Copy ``RUN/embeddings/class_NNN.npy`` (validated, re-saved as plain float32 arrays)."""
    src_dir = run_dir / EMBEDDINGS_DIR
    written: list[str] = []
    if not src_dir.is_dir():
        return written
    for idx in range(num_classes):
        src = run_dir / embeddings_name(idx)
        if not src.is_file():
            continue
        try:
            arr = np.load(src, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ExportError(f"cannot read {src} ({err}): re-run the training's embedding step") from err
        if arr.ndim != 2 or arr.shape[1] != EMBEDDING_DIM or arr.shape[0] == 0 or not np.all(np.isfinite(arr)):
            raise ExportError(f"{src} has shape {arr.shape} or non-finite values; expected float32 (N, {EMBEDDING_DIM})")
        dst = staging / embeddings_name(idx)
        dst.parent.mkdir(parents=True, exist_ok=True)
        np.save(dst, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
        written.append(embeddings_name(idx))
    return written


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    precision: Precision = "fp16",
    opset: int = DEFAULT_OPSET,
    which: str = "best",
    score: str | None = None,
    progress: ProgressFn | None = None,
) -> Bundle:
    """Export a run directory into a bundle; returns the loaded (verified) bundle.

    The bundle is assembled in a temporary sibling directory and moved into place at the end,
    so an interrupted export never leaves a directory that looks like a bundle.
    """
    from edge_asd.core.scoring import DEFAULT_KNN_K
    from trainer.checkpoint import load_model

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    say = progress or (lambda msg: logger.info("%s", msg))
    if not 9 <= opset <= MAX_TRT_OPSET:
        raise ExportError(f"opset {opset} is outside what TensorRT 10.3 parses (9..{MAX_TRT_OPSET})")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MODEL_JSON).is_file():
        raise ExportError(f"{out_dir} exists and is not a bundle: choose an empty or new directory")
    say(f"loading run {run_dir} ({which})")
    model, run_config = load_model(run_dir, which=which)
    model.eval()
    classes = [str(c) for c in run_config.get("classes", [])]
    num_classes = int(model.config.num_classes)
    if len(classes) != num_classes:
        raise ExportError(f"{run_dir}/config.json lists {len(classes)} classes but the model has {num_classes}")
    thresholds = read_thresholds(run_dir, classes)
    mode = score or (thresholds.score if thresholds is not None else "ce")
    if mode not in ("ce", "knn", "ensemble"):
        raise ExportError(f"score mode must be ce, knn or ensemble, got {mode!r}")
    knn_k = int((thresholds.knn_k if thresholds is not None and thresholds.knn_k else None) or DEFAULT_KNN_K)
    note = None
    if thresholds is None:
        note = (
            f"{run_dir}/thresholds.json was absent at export: the bundle carries no thresholds; "
            "give each stream a threshold in the device config, or run `edge-asd calibrate-run` and export again"
        )
        logger.warning("%s", note)
    elif thresholds.score != mode:
        note = f"thresholds were calibrated for the {thresholds.score} score, not {mode}: calibrate again for {mode}"
        logger.warning("%s", note)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SAMPLES

        say(f"exporting {MODEL_ONNX} ({precision}, DFT-as-conv front end, opset {opset})")
        export_onnx(model, staging / MODEL_ONNX, precision=precision, lowering="conv", opset=opset)
        cpu_opset = max(opset, MIN_STFT_OPSET)
        say(f"exporting {MODEL_CPU_ONNX} (fp32, STFT front end, opset {cpu_opset})")
        export_onnx(
            model, staging / MODEL_CPU_ONNX, precision="fp32", lowering="stft", opset=cpu_opset, decompose_prelu=True
        )
        embedded = _copy_embeddings(run_dir, staging, num_classes)
        if mode != "ce" and len(embedded) != num_classes:
            raise ExportError(
                f"score mode {mode} needs {run_dir}/embeddings/class_NNN.npy for all {num_classes} classes "
                f"(found {len(embedded)}): run the training's embedding step or export with --score ce"
            )
        files = {rel: file_entry(staging / rel) for rel in (MODEL_ONNX, MODEL_CPU_ONNX, *embedded)}
        report = _read_json(run_dir / "report.json")
        manifest = BundleManifest(
            edge_asd_version=_edge_asd_version(),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            classes=classes,
            sample_rate=SAMPLE_RATE,
            window_samples=WINDOW_SAMPLES,
            frontend=frontend_parameters(),
            model=ModelInfo(
                arch=model.config.arch,
                num_classes=num_classes,
                s=float(model.config.s),
                m=float(model.config.m),
                loss=str(run_config.get("loss", "noisy-arcmix")),
            ),
            score=ScoreConfig(mode=mode, knn_k=knn_k),
            thresholds=thresholds,
            thresholds_note=note,
            training={"run": str(run_dir.resolve()), "checkpoint": which, **training_figures(run_dir)},
            evaluation=_summarise(report) if isinstance(report, dict) else None,
            onnx=OnnxInfo(opset=opset, precision=precision, cpu_opset=cpu_opset),
            files=files,
        )
        write_manifest(staging, manifest)
        load_bundle(staging)  # the bundle we hand out must pass the device's own checks
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.replace(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"bundle written to {out_dir}")
    return load_bundle(out_dir)


__all__ = [
    "DEFAULT_OPSET",
    "build_export_module",
    "export_onnx",
    "export_run",
    "frontend_parameters",
    "read_thresholds",
    "training_figures",
]
