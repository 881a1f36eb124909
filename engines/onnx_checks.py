"""Static checks on the exported ONNX graphs, run by the export and by the tests.

Why here and not left to the Jetson: a graph that TensorRT 10.3 (JetPack 6) cannot parse, or
an FP16 graph whose front end silently runs in half precision (power overflows past 65504 at
n_fft = 2048, ``log(0)`` = -inf), only fails on the device, long after the export. These
checks catch both on the workstation.

Needs ``onnx`` only (no torch).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

from engines.errors import ExportError

logger = logging.getLogger(__name__)

# ONNX ops that onnx-tensorrt (the parser inside TensorRT 10.0-10.3, docs/operators.md of the
# 10.x branches) lists as supported ("Y"), restricted to the ones a CNN + DFT-as-Conv front end
# + ArcFace head can reasonably produce. Deliberately absent: STFT, DFT, MelWeightMatrix and
# the window ops (all "N" before 10.5; STFT came in 10.5, DFT in 11.2), Sequence*, Loop/If
# (parseable but a sign of a data-dependent graph we do not want), NonZero, Unique.
TENSORRT_10_3_OPS: frozenset[str] = frozenset(
    {
        "Abs", "Add", "And", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Ceil",
        "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "Cos", "CumSum", "Div", "Dropout",
        "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "Gather",
        "GatherElements", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual",
        "HardSigmoid", "Identity", "InstanceNormalization", "LayerNormalization", "LeakyRelu", "Less",
        "LessOrEqual", "Log", "LogSoftmax", "LpNormalization", "MatMul", "Max", "MaxPool", "Mean",
        "Min", "Mul", "Neg", "Not", "Or", "Pad", "Pow", "PRelu", "Range", "Reciprocal", "ReduceL1",
        "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
        "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Shape", "Sigmoid", "Sign",
        "Sin", "Slice", "Softmax", "Softplus", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh",
        "Tile", "TopK", "Transpose", "Unsqueeze", "Where",
    }
)  # fmt: skip

FORBIDDEN_FRONT_END_OPS = frozenset({"STFT", "DFT", "MelWeightMatrix", "HannWindow", "HammingWindow", "BlackmanWindow"})

_FLOAT_TYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.DOUBLE: "float64"}


def op_types(model: onnx.ModelProto) -> set[str]:
    """Every op type of the main graph and of any subgraph."""
    found: set[str] = set()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            found.add(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(model.graph)
    return found


def unsupported_ops(model: onnx.ModelProto, allowed: Iterable[str] = TENSORRT_10_3_OPS) -> list[str]:
    """Op types of ``model`` that are not on the TensorRT 10.3 allow-list (sorted)."""
    allowed = set(allowed)
    return sorted(op for op in op_types(model) if op not in allowed)


def check_tensorrt_ops(model: onnx.ModelProto, where: str) -> None:
    """Raise if the graph uses an op TensorRT 10.3's ONNX parser cannot handle."""
    bad = unsupported_ops(model)
    if bad:
        raise ExportError(
            f"{where} uses ONNX ops that TensorRT 10.3 (JetPack 6) cannot parse: {', '.join(bad)}. "
            "Export model.onnx with the front end lowered to Conv (lowering='conv') and without those ops"
        )


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor name, from onnx shape inference plus inputs and initializers."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    types: dict[str, int] = {}
    graph = inferred.graph
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def _cast_to(node: onnx.NodeProto) -> int | None:
    for attr in node.attribute:
        if attr.name == "to":
            return int(attr.i)
    return None


@dataclass
class PrecisionReport:
    """Which nodes form the float32 front end and head of an FP16 graph, and their types."""

    front_end: list[str] = field(default_factory=list)
    head: list[str] = field(default_factory=list)
    fp16_nodes: int = 0
    problems: list[str] = field(default_factory=list)


def precision_report(model: onnx.ModelProto, input_name: str = "audio") -> PrecisionReport:
    """Split an FP16 graph into front end / backbone / head and check the front end and head are float32.

    The front end is everything reachable from the input without crossing a ``Cast`` to
    float16; the head is everything that reaches an output without crossing a ``Cast`` to
    float32 (walking backwards). Every float tensor those nodes produce must be float32, and the
    backbone in between must actually hold float16 nodes (else the export silently fell back).
    """
    graph = model.graph
    types = value_types(model)
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    report = PrecisionReport()

    def node_id(node: onnx.NodeProto) -> str:
        return node.name or f"{node.op_type}->{node.output[0]}"

    front: dict[str, onnx.NodeProto] = {}
    stack = [input_name]
    while stack:
        for node in consumers.get(stack.pop(), []):
            if node.op_type == "Cast" and _cast_to(node) == TensorProto.FLOAT16:
                continue
            if node_id(node) not in front:
                front[node_id(node)] = node
                stack.extend(node.output)
    head: dict[str, onnx.NodeProto] = {}
    stack = [o.name for o in graph.output]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node_id(node) in head:
            continue
        if node.op_type == "Cast" and _cast_to(node) == TensorProto.FLOAT:
            continue
        head[node_id(node)] = node
        stack.extend(node.input)
    for part, nodes in (("front end", front), ("head", head)):
        for nid, node in nodes.items():
            for out in node.output:
                dtype = types.get(out)
                if dtype is None:
                    report.problems.append(f"{part} node {nid} ({node.op_type}) output {out}: type unknown")
                elif dtype in _FLOAT_TYPES and dtype != TensorProto.FLOAT:
                    report.problems.append(
                        f"{part} node {nid} ({node.op_type}) output {out} is {_FLOAT_TYPES[dtype]}, not float32"
                    )
    report.front_end = sorted(front)
    report.head = sorted(head)
    report.fp16_nodes = sum(
        1 for node in graph.node if any(types.get(o) == TensorProto.FLOAT16 for o in node.output)
    )
    if report.fp16_nodes == 0:
        report.problems.append("no float16 node in the graph: the backbone is not half precision")
    front_ops = {n.op_type for n in front.values()}
    for needed in ("Conv", "MatMul", "Log"):
        if needed not in front_ops:
            report.problems.append(f"front end holds no {needed} node (DFT conv, mel MatMul, log expected)")
    overlap = set(front) & set(head)
    if overlap:
        report.problems.append(f"front end and head overlap ({len(overlap)} nodes): no fp16 backbone between them")
    return report


def check_fp16_precision(model: onnx.ModelProto, where: str) -> PrecisionReport:
    report = precision_report(model)
    if report.problems:
        raise ExportError(f"{where}: FP16 graph precision check failed: " + "; ".join(report.problems[:8]))
    return report


def check_signature(model: onnx.ModelProto, where: str, window_samples: int, num_classes: int, emb_dim: int) -> None:
    """The I/O contract: ``audio`` f32 [batch, N] -> ``scores`` f32 [batch, C], ``embedding`` f32 [batch, D]."""

    def dims(vi: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]

    expected = {
        "audio": ("input", [window_samples]),
        "scores": ("output", [num_classes]),
        "embedding": ("output", [emb_dim]),
    }
    found = {vi.name: ("input", vi) for vi in model.graph.input}
    found.update({vi.name: ("output", vi) for vi in model.graph.output})
    for name, (kind, tail) in expected.items():
        if name not in found or found[name][0] != kind:
            raise ExportError(f"{where} has no {kind} named {name!r}")
        vi = found[name][1]
        if vi.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise ExportError(f"{where}: {name} is not float32")
        shape = dims(vi)
        if len(shape) != 2 or not isinstance(shape[0], str) or shape[1:] != tail:
            raise ExportError(f"{where}: {name} has shape {shape}, expected [batch, {tail[0]}] with a dynamic batch")


__all__ = [
    "FORBIDDEN_FRONT_END_OPS",
    "TENSORRT_10_3_OPS",
    "PrecisionReport",
    "check_fp16_precision",
    "check_signature",
    "check_tensorrt_ops",
    "op_types",
    "precision_report",
    "unsupported_ops",
    "value_types",
]
