"""A bundle's knn references and thresholds come from the weights it exports.

A run whose ``model_best.pt`` and ``model_last.pt`` differ (two random initialisations) on the
tiny synthetic set: its own references are made with the best weights; exporting
``--checkpoint last`` must embed the reference clips and score the held-out clips again with
the last weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from edge_asd.core.audio_io import fit_length, read_audio  # noqa: E402
from edge_asd.core.scoring import l2_normalise  # noqa: E402
from engines.errors import ExportError  # noqa: E402
from engines.export import export_run  # noqa: E402
from tests.fixtures.training import tiny_synth  # noqa: E402

CLASSES = ["fan/id_00", "fan/id_02"]


@pytest.fixture(scope="module")
def two_weight_run(tmp_path_factory: pytest.TempPathFactory, artifacts_dir: Path) -> dict:
    from trainer import data as data_mod
    from trainer.checkpoint import save_run, save_weights
    from trainer.data.split import load_or_make_split
    from trainer.model import TASTgramMFN
    from trainer.references import calibrate_run, write_reference_embeddings

    data = tiny_synth(artifacts_dir / "tiny-synth")
    run = tmp_path_factory.mktemp("refs") / "run"
    torch.manual_seed(0)
    best = TASTgramMFN(len(CLASSES)).eval()
    extra = {
        "loss": "noisy-arcmix",
        "train": {"seed": 5, "score": "knn", "knn_k": 2, "false_alarm_rate": 0.01},
        "data": {"layout": "auto", "class_by": "section", "roots": [str(data.resolve())]},
    }
    save_run(run, best, CLASSES, extra)
    torch.manual_seed(1)
    last = TASTgramMFN(len(CLASSES)).eval()
    save_weights(run, last, "last")
    index = data_mod.build_index([str(data)])
    clips = [c for c in index.clips if c.split == "train"]
    load_or_make_split(run, clips, [CLASSES.index(c.class_name) for c in clips], 0.34, 5, resume=False, write=True)
    write_reference_embeddings(run, device="cpu", progress=False)
    calibrate_run(run, device="cpu", progress=False)
    return {"run": run, "data": data, "best": best, "last": last}


def _embed(model, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    audio = torch.from_numpy(np.stack([fit_length(read_audio(p)) for p in paths]))
    with torch.inference_mode():
        scores, emb = model(audio)
    return scores.numpy(), l2_normalise(emb.numpy())


def _clip_sets(run: Path):
    from trainer.checkpoint import read_run_config
    from trainer.clips import training_clip_sets

    return training_clip_sets(run, read_run_config(run))


def test_references_for_knows_which_weights_made_them(two_weight_run, tmp_path: Path) -> None:
    from trainer.references import references_for

    run = two_weight_run["run"]
    assert references_for(run, "best", tmp_path / "best") == run
    work = references_for(run, "last", tmp_path / "last")
    assert work == tmp_path / "last"
    assert json.loads((work / "embeddings" / "weights.json").read_text())["checkpoint"] == "last"
    assert json.loads((work / "thresholds.json").read_text())["checkpoint"] == "last"


def test_export_last_embeds_and_calibrates_with_the_last_weights(two_weight_run, tmp_path: Path) -> None:
    run, last, best = two_weight_run["run"], two_weight_run["last"], two_weight_run["best"]
    refs, heldout = _clip_sets(run)
    bundle = export_run(run, tmp_path / "bundle-last", precision="fp32", which="last")
    assert bundle.manifest.training["checkpoint"] == "last"
    assert "recomputed" in bundle.manifest.training["references"]
    for c in range(len(CLASSES)):
        paths = [r.path for r in refs if r.class_index == c]
        shipped = np.load(bundle.path / f"embeddings/class_{c:03d}.npy", allow_pickle=False)
        _, with_last = _embed(last, paths)
        _, with_best = _embed(best, paths)
        assert shipped.shape == with_last.shape
        assert np.allclose(shipped, with_last, atol=1e-4)
        assert not np.allclose(shipped, with_best, atol=1e-2)
        # The thresholds' reference ce scores are the held-out clips scored by the same weights.
        held = [h.path for h in heldout if h.class_index == c]
        ce_last = np.sort(_embed(last, held)[0][:, c])
        reference = bundle.manifest.thresholds.classes[CLASSES[c]].reference["ce"]
        assert np.allclose(reference, ce_last, rtol=1e-4, atol=1e-5)
    # The run's own files are left as they were (made with the best weights).
    assert json.loads((run / "embeddings" / "weights.json").read_text())["checkpoint"] == "best"


def test_export_best_copies_the_runs_references(two_weight_run, tmp_path: Path) -> None:
    run = two_weight_run["run"]
    bundle = export_run(run, tmp_path / "bundle-best", precision="fp32")
    assert bundle.manifest.training["references"] == "the run's"
    for c in range(len(CLASSES)):
        own = np.load(run / f"embeddings/class_{c:03d}.npy")
        assert np.array_equal(np.load(bundle.path / f"embeddings/class_{c:03d}.npy"), own)


def test_export_last_without_the_training_data_says_what_to_do(two_weight_run, tmp_path: Path) -> None:
    copy = tmp_path / "moved-run"
    shutil.copytree(two_weight_run["run"], copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["data"]["roots"] = [str(tmp_path / "gone")]
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="--data"):
        export_run(copy, tmp_path / "bundle", precision="fp32", which="last")
    assert not (tmp_path / "bundle").exists()
