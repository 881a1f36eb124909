"""One ONNX file from a ``TASTgramMFN``: trace, rewrite, check, simplify, save.

``lowering`` says where the log-mel comes from: ``conv`` (DFT as a Conv1d, TensorRT),
``stft`` (ONNX ``STFT``, onnxruntime) or ``input`` (a second graph input ``logmel``
``[batch, 128, 313]``, filled by the device's streaming numpy front end; fp32 only).

After ``torch.onnx.export`` the graph gets two rewrites that keep it portable
(``_fold_static_eyelike``; ``_decompose_prelu`` for the CPU graph only), onnxslim's constant
folding, and the checks a device would otherwise fail on much later: ``onnx.checker``, the I/O
signature, the TensorRT 10.3 op allow-list (DFT-as-conv graph) and the FP16 typing.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edge_asd.core.constants import EMBEDDING_DIM, WINDOW_SAMPLES
from edge_asd.core.logmel import N_MELS, n_frames
from engines.bundle import LOGMEL_INPUT_NAME
from engines.errors import ExportError
from engines.export.graph import Precision, build_export_module, build_logmel_input_module

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
MIN_STFT_OPSET = 17
"""ONNX ``STFT`` (the CPU graph's front end) exists from opset 17."""
MAX_TRT_OPSET = 20
"""TensorRT 10.0-10.3 parse opsets 9..20."""
INPUT_NAME = "audio"
LOGMEL_LOWERING = "input"
"""The ``lowering`` of the graph whose log-mel is an input (``model_cpu_logmel.onnx``)."""
OUTPUT_NAMES = ("scores", "embedding")
_TRACE_BATCH = 2  # > 1 so the tracer cannot specialise the batch dimension to 1


def export_onnx(
    model: Any,
    path: str | Path,
    *,
    precision: Precision = "fp16",
    lowering: str = "conv",
    opset: int = DEFAULT_OPSET,
    window_samples: int = WINDOW_SAMPLES,
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
    dummy = torch.zeros(_TRACE_BATCH, window_samples, dtype=torch.float32)
    dummy[:, ::97] = 0.05  # not all zeros: keeps no branch of the trace degenerate
    inputs: tuple[Any, ...] = (dummy,)
    input_names = [INPUT_NAME]
    if lowering == LOGMEL_LOWERING:
        if precision != "fp32":
            raise ExportError(f"the graph with a log-mel input is float32 only, got {precision}")
        module = build_logmel_input_module(model)
        with torch.no_grad():
            inputs = (dummy, module.fp32.logmel(dummy))  # a real log-mel: no degenerate branch
        input_names.append(LOGMEL_INPUT_NAME)
    else:
        module = build_export_module(model, precision, lowering)
    dynamic = {name: {0: "batch"} for name in (*input_names, *OUTPUT_NAMES)}
    raw = path.with_suffix(".raw.onnx")
    started = time.perf_counter()
    try:
        # The exporter warns that strided Slices (the DFT's real/imaginary halves) are not
        # constant-folded; harmless, and noise in every export's output.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            torch.onnx.export(
                module,
                inputs,
                str(raw),
                input_names=input_names,
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
    if lowering == LOGMEL_LOWERING:
        _check_logmel_input(graph, where, n_frames(window_samples))
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


def _check_logmel_input(graph: Any, where: str, frames: int) -> None:
    """The log-mel graph takes ``logmel`` f32 ``[batch, 128, frames]`` and computes no front end.

    A front-end op left in it would mean the input is ignored (or the export traced the wrong
    module): the device would pay for the log-mel twice and its cache would change nothing.
    """
    from onnx import TensorProto

    from engines import onnx_checks

    found = {vi.name: vi for vi in graph.graph.input}
    vi = found.get(LOGMEL_INPUT_NAME)
    if vi is None:
        raise ExportError(f"{where} has no input named {LOGMEL_INPUT_NAME!r}")
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]
    if vi.type.tensor_type.elem_type != TensorProto.FLOAT or len(dims) != 3 or not isinstance(dims[0], str) or dims[1:] != [N_MELS, frames]:
        raise ExportError(f"{where}: {LOGMEL_INPUT_NAME} has shape {dims}, expected float32 [batch, {N_MELS}, {frames}]")
    front = onnx_checks.op_types(graph) & onnx_checks.FORBIDDEN_FRONT_END_OPS
    if front:
        raise ExportError(f"{where} takes the log-mel as an input but still computes a front end ({', '.join(sorted(front))})")


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


__all__ = ["DEFAULT_OPSET", "INPUT_NAME", "LOGMEL_LOWERING", "MAX_TRT_OPSET", "MIN_STFT_OPSET", "OUTPUT_NAMES", "export_onnx"]
