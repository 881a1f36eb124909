"""ONNX export: parity of both graphs with the torch model, FP16 typing, the TensorRT op list.

One random-initialised run (fixed seed, 5 classes) is exported once per module: an fp32
bundle (conv ``model.onnx`` + STFT ``model_cpu.onnx``) and an fp16 ``model.onnx``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edge_asd.config import OnnxRuntimeConfig  # noqa: E402
from edge_asd.core.audio_io import fit_length, read_audio  # noqa: E402
from engines import onnx_checks  # noqa: E402
from engines.bundle import load_bundle  # noqa: E402
from engines.errors import ExportError  # noqa: E402
from engines.export import export_onnx, export_run  # noqa: E402
from engines.runtime.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from tests.fixtures.random_bundle import RANDOM_CLASSES, make_random_run, synthetic_clips  # noqa: E402
from trainer.checkpoint import load_model  # noqa: E402

PARITY_TOL = 1e-3


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("export")
    run = make_random_run(root / "run", RANDOM_CLASSES, seed=3)
    bundle = export_run(run, root / "bundle-fp32", precision="fp32")
    model, _ = load_model(run)
    fp16_path = export_onnx(model, root / "model_fp16.onnx", precision="fp16", lowering="conv")
    return {"run": run, "bundle": bundle, "model": model, "fp16": fp16_path, "root": root}


def _torch_scores(model, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        scores, emb = model(torch.from_numpy(audio))
    return scores.numpy(), emb.numpy()


def _real_clips(shared_data: Path) -> np.ndarray:
    files = sorted(shared_data.rglob("*.wav"))
    assert files, f"no WAV under {shared_data}"
    return np.stack([fit_length(read_audio(f)) for f in files])


@pytest.fixture(scope="module")
def clips(exported, shared_data) -> dict:
    """Every real clip plus synthetic ones, with the torch reference computed once."""
    audio = np.concatenate([_real_clips(shared_data), synthetic_clips(8, seed=11), synthetic_clips(16, seed=5)])
    scores, emb = _torch_scores(exported["model"], audio)
    return {"audio": audio, "scores": scores, "embedding": emb, "ort": {}}


def _ort_scores(exported, clips, onnx_file: str, batch: int) -> np.ndarray:
    key = (onnx_file, batch)
    if key not in clips["ort"]:
        runtime = OnnxRuntimeBackend(exported["bundle"], OnnxRuntimeConfig(max_batch=batch, onnx_file=onnx_file))
        clips["ort"][key] = runtime.infer(clips["audio"])  # chunks of `batch`
    return clips["ort"][key]


@pytest.mark.parametrize("onnx_file", ["model_cpu.onnx", "model.onnx"])
@pytest.mark.parametrize("batch", [1, 8])
def test_fp32_graphs_match_torch(exported, clips, onnx_file: str, batch: int) -> None:
    out = _ort_scores(exported, clips, onnx_file, batch)
    ref_scores, ref_emb = clips["scores"], clips["embedding"]
    diff = np.abs(out.scores - ref_scores).max()
    assert diff <= PARITY_TOL, f"{onnx_file} batch {batch}: max |score diff| {diff:.3g}"
    assert np.allclose(out.embedding, ref_emb, rtol=1e-3, atol=1e-5)


def test_fp16_graph_ranks_like_fp32(exported, clips) -> None:
    """fp16 model.onnx vs fp32 on 50+ clips.

    Runs the typed fp16 graph itself with onnxruntime on the CPU (its CPU provider has float16
    kernels for every op in it, checked with onnxruntime 1.32). Should an onnxruntime lack one,
    the same export wrapper in torch (float32 front end and head, ``.half()`` backbone) stands
    in, and the test says so.
    """
    import onnxruntime as ort
    from scipy.stats import spearmanr

    from engines.export import build_export_module

    audio = clips["audio"]
    assert audio.shape[0] >= 50
    fp32 = _ort_scores(exported, clips, "model.onnx", 8).scores
    try:
        session = ort.InferenceSession(str(exported["fp16"]), providers=["CPUExecutionProvider"])
        fp16 = np.concatenate(
            [session.run(["scores"], {"audio": audio[i : i + 8]})[0] for i in range(0, len(audio), 8)]
        )
        how = "onnxruntime CPU on the fp16 graph"
    except Exception as err:  # onnxruntime without a float16 kernel for some op
        module = build_export_module(exported["model"], "fp16", "conv")
        with torch.inference_mode():
            fp16 = np.concatenate([module(torch.from_numpy(audio[i : i + 8]))[0].numpy() for i in range(0, len(audio), 8)])
        how = f"torch float16 backbone on the CPU (onnxruntime could not run the fp16 graph: {err})"
    assert fp16.dtype == np.float32 and fp16.shape == fp32.shape
    rho = spearmanr(fp16.ravel(), fp32.ravel()).statistic
    max_diff = float(np.abs(fp16 - fp32).max())
    print(f"fp16 vs fp32 ({how}, {audio.shape[0]} clips): spearman {rho:.5f}, max |diff| {max_diff:.4f}")
    assert rho >= 0.999, f"spearman {rho:.5f}, max |diff| {max_diff:.4f}"
    assert np.all(np.isfinite(fp16))


def test_torch_backend_matches_onnxruntime(exported, clips) -> None:
    """The debugging backend loads the run the bundle points at and agrees with the CPU graph."""
    from engines.runtime import open_runtime

    audio = clips["audio"][:6]
    with open_runtime(exported["bundle"], backend="torch", max_batch=4) as rt:
        assert rt.type_key == "torch" and "eager" in rt.describe()
        out = rt.infer(audio)
    ref = _ort_scores(exported, clips, "model_cpu.onnx", 8).scores[:6]
    assert np.abs(out.scores - ref).max() <= PARITY_TOL


def test_tensorrt_graphs_use_only_tensorrt_10_3_ops(exported) -> None:
    for path in (exported["bundle"].onnx_path, exported["fp16"]):
        graph = onnx.load(str(path))
        ops = onnx_checks.op_types(graph)
        assert onnx_checks.unsupported_ops(graph) == [], f"{path}: {onnx_checks.unsupported_ops(graph)}"
        assert not ops & onnx_checks.FORBIDDEN_FRONT_END_OPS
        assert {"Conv", "MatMul", "Log"} <= ops
    cpu_ops = onnx_checks.op_types(onnx.load(str(exported["bundle"].cpu_onnx_path)))
    assert "STFT" in cpu_ops  # the CPU graph does use the fast STFT lowering
    assert "PRelu" not in cpu_ops  # decomposed for onnxruntime's CPU provider (parity is checked above)
    assert "PRelu" in onnx_checks.op_types(onnx.load(str(exported["bundle"].onnx_path)))
    assert onnx_checks.unsupported_ops(onnx.load(str(exported["bundle"].cpu_onnx_path))) == ["STFT"]


def test_fp16_front_end_and_head_are_float32(exported) -> None:
    graph = onnx.load(str(exported["fp16"]))
    report = onnx_checks.precision_report(graph)
    assert report.problems == []
    assert report.fp16_nodes > 20  # the backbone really is half precision
    types = onnx_checks.value_types(graph)
    nodes = {n.name or n.output[0]: n for n in graph.graph.node}
    dft = [nodes[n] for n in report.front_end if nodes[n].op_type == "Conv"]
    assert len(dft) == 1 and types[dft[0].output[0]] == onnx.TensorProto.FLOAT
    assert any(nodes[n].op_type == "Log" for n in report.front_end)
    assert any(nodes[n].op_type in ("ReduceL2", "Div", "Exp") for n in report.head)
    casts = [n for n in graph.graph.node if n.op_type == "Cast"]
    to = {a.i for n in casts for a in n.attribute if a.name == "to"}
    assert {onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT} <= to


def test_precision_check_catches_fp16_front_end(exported) -> None:
    """A graph whose DFT conv, mel and log run in float16 (cast at the input) is refused."""
    from onnx import TensorProto, helper, numpy_helper

    fp32_graph = onnx.load(str(exported["bundle"].onnx_path))
    assert any("no float16 node" in p for p in onnx_checks.precision_report(fp32_graph).problems)

    w = numpy_helper.from_array(np.zeros((4, 1, 8), np.float16), "w")
    fb = numpy_helper.from_array(np.zeros((2, 2), np.float16), "fb")
    nodes = [
        helper.make_node("Cast", ["audio"], ["a16"], to=TensorProto.FLOAT16),
        helper.make_node("Unsqueeze", ["a16", "axes"], ["a3"]),
        helper.make_node("Conv", ["a3", "w"], ["spec"], strides=[4]),
        helper.make_node("MatMul", ["fb", "spec_half"], ["mel"]),
        helper.make_node("Slice", ["spec", "zero", "two", "one"], ["spec_half"]),
        helper.make_node("Log", ["mel"], ["logmel"]),
        helper.make_node("Cast", ["logmel"], ["out"], to=TensorProto.FLOAT),
    ]
    consts = [
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([2], np.int64), "two"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
    ]
    graph = helper.make_graph(
        [nodes[0], nodes[1], nodes[2], nodes[4], nodes[3], nodes[5], nodes[6]],
        "fp16-front-end",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [w, fb, *consts],
    )
    report = onnx_checks.precision_report(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert any("front end holds no Conv" in p for p in report.problems)
    with pytest.raises(ExportError, match="FP16 graph precision check failed"):
        onnx_checks.check_fp16_precision(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "x")


def test_signature_and_dynamic_batch(exported) -> None:
    for path in (exported["bundle"].onnx_path, exported["bundle"].cpu_onnx_path, exported["fp16"]):
        onnx_checks.check_signature(onnx.load(str(path)), str(path), 160000, len(RANDOM_CLASSES), 128)


def test_manifest_contents(exported) -> None:
    m = exported["bundle"].manifest
    assert m.classes == RANDOM_CLASSES
    assert m.onnx.precision == "fp32" and m.onnx.opset == 17 and m.onnx.cpu_opset >= 17
    assert m.score.mode == "ensemble" and m.thresholds is not None
    assert set(m.thresholds.classes) == set(RANDOM_CLASSES)
    assert m.frontend["n_fft"] == 2048 and m.frontend["n_mels"] == 128
    assert m.training["best"]["val_loss"] == 2.5 and m.training["last"]["epoch"] == 2
    assert all(f"embeddings/class_{i:03d}.npy" in m.files for i in range(len(RANDOM_CLASSES)))
    emb = np.load(exported["bundle"].path / "embeddings/class_000.npy", allow_pickle=False)
    assert emb.dtype == np.float32 and emb.shape[1] == 128


def test_export_without_thresholds_says_so(exported, tmp_path: Path) -> None:
    run = exported["run"]
    copy = tmp_path / "run"
    copy.mkdir()
    for item in ("config.json", "model_best.pt", "model_last.pt"):
        (copy / item).write_bytes((run / item).read_bytes())
    bundle = export_run(copy, tmp_path / "bundle", precision="fp32")
    assert bundle.manifest.thresholds is None
    assert "thresholds.json" in (bundle.manifest.thresholds_note or "")
    assert bundle.manifest.score.mode == "ce"
    with pytest.raises(ExportError, match="embeddings"):
        export_run(copy, tmp_path / "bundle-knn", precision="fp32", score="knn")


def test_export_errors(exported, tmp_path: Path) -> None:
    model = exported["model"]
    with pytest.raises(ExportError, match="opset >= 17"):
        export_onnx(model, tmp_path / "x.onnx", precision="fp32", lowering="stft", opset=16)
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a bundle"):
        export_run(exported["run"], tmp_path / "occupied")
    with pytest.raises(ExportError, match="opset"):
        export_run(exported["run"], tmp_path / "b", opset=25)


def test_export_cli(exported, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edge_asd.cli import app

    out = tmp_path / "cli-bundle"
    result = CliRunner().invoke(app, ["export", str(exported["run"]), "--out", str(out), "--precision", "fp16"])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(out)
    assert bundle.manifest.onnx.precision == "fp16"
    doc = json.loads((out / "model.json").read_text())
    assert doc["schema_version"] == 1 and math.isfinite(doc["thresholds"]["classes"]["fan/section_00"]["threshold"])
