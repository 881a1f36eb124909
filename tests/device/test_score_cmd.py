"""``edge-asd score`` on a directory of DCASE-named WAVs (device path: onnxruntime, no torch)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_asd.core.audio_io import fit_length, read_audio, write_wav
from edge_asd.core.errors import UserError
from engines.bundle import load_bundle
from engines.errors import BundleError
from engines.runtime import open_runtime
from engines.scorer import Scorer

pytestmark = pytest.mark.device
pytest.importorskip("onnxruntime")


@pytest.fixture
def wav_dir(tmp_path: Path, shared_data: Path) -> Path:
    root = tmp_path / "clips"
    picks = [
        next(shared_data.glob("dcase2020-mini/ToyCar/test/normal_id_01_*.wav")),
        next(shared_data.glob("dcase2023-mini/fan/test/section_00_*.wav")),
    ]
    for src in picks:
        dst = root / src.parent.parent.name / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    rng = np.random.default_rng(0)
    write_wav(root / "misc" / "recording.wav", 0.1 * rng.standard_normal(48000).astype(np.float32))
    (root / "misc" / "notes.txt").write_text("not audio")
    return root


def _run(args: list[str]):
    from edge_asd.cli import app

    return CliRunner().invoke(app, args)


def test_score_directory_json(cached_bundle: Path, wav_dir: Path, no_torch_guard) -> None:
    result = _run(["score", str(cached_bundle), str(wav_dir), "--json", "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    by_name = {Path(r["file"]).name: r for r in doc["results"]}
    assert len(by_name) == 3  # notes.txt skipped
    bundle = load_bundle(cached_bundle)
    toycar = next(r for n, r in by_name.items() if n.startswith("normal_id_01"))
    fan = next(r for n, r in by_name.items() if n.startswith("section_00"))
    assert toycar["classes"] == ["ToyCar/id_01"] and toycar["class"] == "ToyCar/id_01"
    assert fan["classes"] == ["fan/section_00"]
    assert by_name["recording.wav"]["classes"] == bundle.classes  # no DCASE name: all classes
    for r in doc["results"]:
        assert r["verdict"] == ("ANOMALY" if r["score"] > r["threshold"] else "normal")
        assert r["score_mode"] == bundle.manifest.score.mode
    # The numbers are the runtime's and the scorer's.
    audio = fit_length(read_audio(toycar["file"]))[None, :]
    with open_runtime(bundle, backend="onnxruntime") as rt:
        expected = Scorer(bundle).score(rt.infer(audio), [[0]])[0]
    assert toycar["score"] == pytest.approx(expected, rel=1e-5)


def test_score_with_explicit_classes_and_table(cached_bundle: Path, wav_dir: Path) -> None:
    result = _run(
        ["score", str(cached_bundle), str(wav_dir / "misc"), "--class", "fan/section_00", "--class", "valve/section_00"]
    )
    assert result.exit_code == 0, result.output
    assert "1 files" in result.stdout and ("normal" in result.stdout or "ANOMALY" in result.stdout)
    doc = json.loads(_run(["score", str(cached_bundle), str(wav_dir / "misc"), "--class", "fan/section_00", "--json"]).stdout)
    assert doc["results"][0]["class"] == "fan/section_00"


def test_score_errors_are_user_errors(cached_bundle: Path, wav_dir: Path, tmp_path: Path) -> None:
    result = _run(["score", str(cached_bundle), str(wav_dir), "--class", "pump/id_09"])
    assert isinstance(result.exception, BundleError) and "pump/id_09" in str(result.exception)
    result = _run(["score", str(cached_bundle), str(tmp_path / "missing.wav")])
    assert isinstance(result.exception, UserError) and "does not exist" in str(result.exception)
    result = _run(["score", str(tmp_path), str(wav_dir)])
    assert isinstance(result.exception, BundleError) and "model.json is missing" in str(result.exception)
