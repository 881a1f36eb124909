"""`edge-asd info BUNDLE`: classes, score, thresholds, files, engines built, runtimes usable here;
a missing or corrupt bundle is one line and exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engines.bundle import load_bundle
from engines.runtime import backend_status

pytestmark = pytest.mark.device

EDGE_ASD = [sys.executable, "-c", "from edge_asd.cli import main; main()"]


def _info(*args: str):
    from edge_asd.cli import app

    return CliRunner().invoke(app, ["info", *args])


@pytest.fixture
def bundle_copy(cached_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(cached_bundle, tmp_path / "bundle"))


def test_info_json_describes_the_bundle(cached_bundle: Path, no_torch_guard) -> None:
    result = _info(str(cached_bundle), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    manifest = load_bundle(cached_bundle).manifest
    assert [c["name"] for c in doc["classes"]] == manifest.classes
    assert manifest.thresholds is not None
    for c in doc["classes"]:
        assert c["threshold"] == manifest.thresholds.classes[c["name"]].threshold
    assert doc["score"]["mode"] == manifest.score.mode and doc["score"]["knn_k"] == manifest.score.knn_k
    sizes = {f["path"]: f["bytes"] for f in doc["files"]}
    for name in ("model.json", "model.onnx", "model_cpu.onnx"):
        assert sizes[name] == (cached_bundle / name).stat().st_size
    assert doc["engines"] == []
    status = backend_status()
    assert list(doc["runtimes"]) == list(status)
    assert doc["runtimes"]["onnxruntime"] == {"available": True, "reason": None}
    if status["tensorrt"] is not None:
        assert doc["runtimes"]["tensorrt"]["reason"] == status["tensorrt"] and doc["auto"] == "onnxruntime"


def test_info_tables(cached_bundle: Path) -> None:
    result = _info(str(cached_bundle))
    assert result.exit_code == 0, result.output
    out = result.stdout
    manifest = load_bundle(cached_bundle).manifest
    assert all(name in out for name in manifest.classes)
    assert f"score mode: {manifest.score.mode}" in out
    assert "model_cpu.onnx" in out and "MiB" in out
    assert "none built" in out
    assert "onnxruntime  yes" in out and "auto" in out


def test_info_lists_engines_built(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_asd.cli import output

    monkeypatch.setattr(output.console, "width", 200)  # one table row per engine
    engine = bundle_copy / "engines" / "10.3.0_Orin_sm87"
    engine.mkdir(parents=True)
    (engine / "model.plan").write_bytes(b"\0" * 4096)
    meta = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", "precision": "fp16",
            "max_batch": 16, "built": "2026-01-01T00:00:00Z", "onnx_sha256": "0" * 64}
    (engine / "engine.json").write_text(json.dumps(meta))
    doc = json.loads(_info(str(bundle_copy), "--json").stdout)
    (found,) = doc["engines"]
    assert found["dir"] == "10.3.0_Orin_sm87" and found["plan_bytes"] == 4096
    assert (found["tensorrt_version"], found["gpu_name"], found["max_batch"]) == ("10.3.0", "Orin", 16)
    if backend_status()["tensorrt"] is not None:
        assert found["here"] is None
        assert "TensorRT cannot run here" in _info(str(bundle_copy)).stdout
    else:
        assert found["here"] != "usable"  # built for another ONNX file


def test_info_missing_bundle_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "400"}  # rich wraps at the terminal width
    proc = subprocess.run(
        EDGE_ASD + ["info", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: bundle directory") and "nope" in lines[0]


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda b: (b / "model.json").write_text("{ truncated"), "is not valid JSON"),
        (lambda b: (b / "model_cpu.onnx").write_bytes(b"xx"), "truncated or"),
        (lambda b: (b / "embeddings" / "class_000.npy").unlink(), "is missing"),
    ],
)
def test_info_corrupt_bundle_is_one_line_and_exit_2(
    bundle_copy: Path, damage, expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_asd.cli import main

    damage(bundle_copy)
    monkeypatch.setattr(sys, "argv", ["edge-asd", "info", str(bundle_copy)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and expected in " ".join(err.split())
