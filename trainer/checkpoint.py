"""Run directories: the config that rebuilds the model, and weights-only checkpoints.

Checkpoints hold plain state_dicts and are loaded with ``weights_only=True``: a run directory
from someone else cannot execute code on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from edge_asd import __version__ as EDGE_ASD_VERSION
from edge_asd.core.atomic import atomic_write_bytes
from edge_asd.core.errors import UserError
from trainer.model import ModelConfig, TASTgramMFN

RUN_FORMAT = "edge-asd-run"
RUN_VERSION = 1
CONFIG_FILE = "config.json"
CHECKPOINTS = {"best": "model_best.pt", "last": "model_last.pt"}


class RunError(UserError):
    """A run directory that is missing, incomplete, from an incompatible version, or that
    would be overwritten by a new run."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` with the same crash safety as :func:`atomic_write_bytes`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_run_config(run_dir: Path, model_config: dict, classes: list[str], extra: dict | None = None) -> Path:
    """Write ``RUN/config.json``; ``extra`` carries loss, hyperparameters and data description."""
    if len(classes) != model_config["num_classes"]:
        raise ValueError(f"{len(classes)} class names for a model with {model_config['num_classes']} classes")
    config = {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "edge_asd_version": EDGE_ASD_VERSION,
        "model": dict(model_config),
        "classes": list(classes),
        **(extra or {}),
    }
    path = Path(run_dir) / CONFIG_FILE
    atomic_write_bytes(path, json.dumps(config, indent=2).encode())
    return path


def read_run_config(run_dir: Path) -> dict:
    """``RUN/config.json``, checked to be a run of a format this edge-asd reads."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run_dir} is not a training run: {CONFIG_FILE} is missing (train one with `edge-asd train`)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunError(f"{path} is not valid JSON ({err}); the run directory is damaged") from err
    if config.get("format") != RUN_FORMAT or config.get("version") != RUN_VERSION:
        raise RunError(
            f"{path} has format {config.get('format')!r} version {config.get('version')!r}; "
            f"this edge-asd reads {RUN_FORMAT!r} version {RUN_VERSION}"
        )
    return config


def weights_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state_dict's names, dtypes, shapes and values.

    Two checkpoint files with the same weights have the same fingerprint even though their
    bytes differ (``torch.save`` stamps each file), so a run can tell whether its reference
    embeddings and thresholds were computed with the weights being exported or evaluated.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_weights(run_dir: Path, model: TASTgramMFN, which: str) -> Path:
    path = Path(run_dir) / CHECKPOINTS[which]
    atomic_torch_save(model.state_dict(), path)
    return path


def build_model(config: dict) -> TASTgramMFN:
    model_config = ModelConfig.from_dict(config["model"])
    return TASTgramMFN(model_config.num_classes, model_config.arch, model_config.s, model_config.m)


def load_model(run_dir: Path, which: str = "best", map_location: str | torch.device = "cpu") -> tuple[TASTgramMFN, dict]:
    """Rebuild the network of a run and load its best (or last) weights; eval mode."""
    if which not in CHECKPOINTS:
        raise RunError(f"checkpoint {which!r} is unknown: use one of {', '.join(sorted(CHECKPOINTS))}")
    config = read_run_config(run_dir)
    path = Path(run_dir) / CHECKPOINTS[which]
    if not path.is_file():
        raise RunError(f"{path} is missing: the run has not finished an epoch yet (resume it with --resume)")
    model = build_model(config)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise RunError(f"cannot load {path}: {err}") from err
    model.eval()
    return model, config


def save_run(run_dir: Path, model: TASTgramMFN, classes: list[str], extra: dict | None = None) -> Path:
    """Write a complete run (config, best and last weights) from a model in hand: for tests,
    benchmarks and models trained elsewhere."""
    run_dir = Path(run_dir)
    save_run_config(run_dir, model.config.to_dict(), classes, extra)
    save_weights(run_dir, model, "best")
    save_weights(run_dir, model, "last")
    return run_dir


class NumpyPredictor:
    """A model as numpy in, numpy out: ``audio (B, 160000) -> (scores, embedding)``.

    The ``torch`` runtime backend of ``engines`` calls this, so that torch stays behind the
    trainer and the engines package never imports it.
    """

    def __init__(self, model: TASTgramMFN, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(int(threads))
        self.model = model.float().eval()
        self.torch_version = torch.__version__

    def __call__(self, audio: Any) -> tuple[Any, Any]:
        with torch.inference_mode():
            scores, embedding = self.model(torch.from_numpy(audio))
        return scores.numpy(), embedding.float().numpy()
