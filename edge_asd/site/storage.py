"""Where a stream's enrolment lives, and whether it still fits the bundle the device runs.

Enrolments live under ``<state_dir>/enrolment/<stream>/`` (``enrolment.json`` +
``enrolment.npz``, ``edge_asd.core.site.enrolment``), next to the outbox and the evidence, so
they survive restarts and upgrades of the code but belong to the device. An enrolment holds
embeddings of the bundle model: with another model they mean nothing, so each records the
bundle's sha (``bundle_sha``: the sha256 of ``model.onnx``, the identity ``listen`` publishes
as ``name@sha[:12]``) and ``enrolment_status`` reports ``stale`` when it changed, asking to
re-enrol. It also reports ``stale`` when the enrolment was written for another indicator set
spectral-profile size or format version (an edge-asd upgrade), for the same reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge_asd.config import sanitize_id
from edge_asd.core.errors import UserError
from edge_asd.core.indicators import INDICATOR_NAMES
from edge_asd.core.site.enrolment import Enrolment, EnrolmentError, load_enrolment, read_enrolment_json
from edge_asd.core.spectra import PROFILE_SIZE
from engines.bundle import MODEL_ONNX, Bundle

logger = logging.getLogger(__name__)

ENROLMENT_DIR = "enrolment"
"""Folder of the state directory that holds one enrolment folder per stream."""

MIN_SHA_PREFIX = 12
"""Shortest bundle-sha prefix accepted as an identity (what ``listen`` publishes)."""

StatusState = Literal["missing", "ok", "stale"]


class StreamNameError(UserError):
    """A stream name that cannot be a folder and an MQTT topic level."""


def check_stream_name(stream: str) -> str:
    """``stream`` unchanged if it is a safe name (letters, digits, ``_``, ``-``), else an error."""
    if not stream or sanitize_id(stream) != stream:
        raise StreamNameError(
            f"stream name {stream!r} must use only letters, digits, '_' and '-' (it becomes a folder "
            f"and an MQTT topic level): e.g. {sanitize_id(stream or 'stream')!r}"
        )
    return stream


def bundle_sha(bundle: Bundle) -> str:
    """The bundle's identity for enrolments: the sha256 of its ``model.onnx``."""
    return bundle.sha256(MODEL_ONNX)


def same_bundle(stored: str | None, current: str | None) -> bool:
    """Whether two bundle shas name the same bundle (a 12+ character prefix matches the full sha)."""
    if not stored or not current:
        return False
    n = min(len(stored), len(current))
    return n >= MIN_SHA_PREFIX and stored[:n] == current[:n]


def enrolment_dir(state_dir: str | Path, stream: str) -> Path:
    """``<state_dir>/enrolment/<stream>/``."""
    return Path(state_dir) / ENROLMENT_DIR / check_stream_name(stream)


@dataclass(frozen=True)
class EnrolmentStatus:
    """``missing`` | ``ok`` | ``stale``, with a one-line message that says what to do."""

    state: StatusState
    message: str
    path: Path

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def enrolment_status(state_dir: str | Path, stream: str, bundle_sha: str | None) -> EnrolmentStatus:
    """Whether ``stream`` has a usable enrolment for the bundle with ``bundle_sha``."""
    path = enrolment_dir(state_dir, stream)
    enrol_cmd = f"`edge-asd enrol --stream {stream} ...`"
    try:
        doc = read_enrolment_json(path)
    except EnrolmentError as err:
        if not path.exists() or not any(path.iterdir()):
            return EnrolmentStatus("missing", f"stream {stream} is not enrolled: run {enrol_cmd}", path)
        return EnrolmentStatus("stale", str(err), path)
    stored = (doc.get("meta") or {}).get("bundle_sha")
    if not same_bundle(stored, bundle_sha):
        return EnrolmentStatus(
            "stale",
            f"stream {stream} was enrolled with bundle {str(stored)[:12]}, the device now runs "
            f"{str(bundle_sha)[:12]}: re-enrol with {enrol_cmd} (embeddings of another model mean nothing)",
            path,
        )
    if tuple(doc.get("indicator_names") or ()) != INDICATOR_NAMES:
        return EnrolmentStatus(
            "stale",
            f"stream {stream} was enrolled with another condition-indicator set (an edge-asd upgrade): "
            f"re-enrol with {enrol_cmd}",
            path,
        )
    if doc.get("profile_size") not in (None, PROFILE_SIZE):
        return EnrolmentStatus(
            "stale",
            f"stream {stream} was enrolled with spectral profiles of another size (an edge-asd upgrade): "
            f"re-enrol with {enrol_cmd}",
            path,
        )
    return EnrolmentStatus("ok", f"stream {stream} enrolled {doc.get('created', '')}", path)


def save_stream_enrolment(enrolment: Enrolment, state_dir: str | Path, stream: str) -> Path:
    """Store an enrolment for ``stream`` (replacing the previous one atomically, file by file)."""
    return enrolment.save(enrolment_dir(state_dir, stream))


def load_stream_enrolment(state_dir: str | Path, stream: str, bundle_sha: str | None = None) -> Enrolment:
    """The enrolment of ``stream``; ``EnrolmentError`` if missing, corrupt or (with a sha) stale."""
    if bundle_sha is not None:
        status = enrolment_status(state_dir, stream, bundle_sha)
        if status.state != "ok":
            raise EnrolmentError(status.message)
    return load_enrolment(enrolment_dir(state_dir, stream))


def stored_enrolment(state_dir: str | Path, stream: str, bundle_sha: str) -> Enrolment | None:
    """The stream's stored enrolment for this bundle, or None (none, unreadable, another bundle):
    what a re-enrolment replaces, and whose taught windows it keeps."""
    try:
        return load_stream_enrolment(state_dir, stream, bundle_sha)
    except (EnrolmentError, OSError):
        return None


__all__ = [
    "ENROLMENT_DIR",
    "EnrolmentStatus",
    "StreamNameError",
    "bundle_sha",
    "check_stream_name",
    "enrolment_dir",
    "enrolment_status",
    "load_stream_enrolment",
    "same_bundle",
    "save_stream_enrolment",
    "stored_enrolment",
]
