"""Evidence files on this node, found strictly inside the evidence folder.

An event names its evidence by an absolute path on the node that recorded it. The console
never opens that path: anyone who can publish on the broker could send
``"evidence": "/etc/shadow"``. It keeps only the last two parts (the stream's folder and the
file name, the layout of ``edge_asd.evidence.EvidenceStore``), rejects names with
separators, ``..`` or odd suffixes, resolves symbolic links and serves the file only when the
real path is still inside the evidence folder. Anything else is a plain 404.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from urllib.parse import quote

logger = logging.getLogger(__name__)

CONTENT_TYPES = {".wav": "audio/wav", ".png": "image/png"}
"""The evidence kinds served, with the content type browsers need to play or show them."""


def evidence_parts(path: object) -> tuple[str, str] | None:
    """``(folder, file name)`` of an evidence path from an event, or None if it is not one."""
    if not isinstance(path, str) or not path:
        return None
    pure = PurePosixPath(path.replace("\\", "/"))
    if ".." in pure.parts:
        return None
    folder, name = pure.parent.name, pure.name
    if not _safe_part(folder) or not _safe_part(name) or PurePosixPath(name).suffix.lower() not in CONTENT_TYPES:
        return None
    return folder, name


def evidence_url(node: str, path: object) -> str | None:
    """The console URL of an event's evidence file (served by the console of ``node``)."""
    parts = evidence_parts(path)
    if parts is None:
        return None
    return "/evidence/" + "/".join(quote(p, safe="") for p in (node, *parts))


def _safe_part(part: str) -> bool:
    return bool(part) and part not in (".", "..") and "/" not in part and "\\" not in part and "\0" not in part


def resolve_evidence(root: Path, folder: str, name: str) -> Path | None:
    """The real file for ``root/folder/name``, or None when it is missing or would escape ``root``."""
    if not _safe_part(folder) or not _safe_part(name):
        return None
    if PurePosixPath(name).suffix.lower() not in CONTENT_TYPES:
        return None
    try:
        real_root = root.resolve(strict=True)
        real = (root / folder / name).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return None
    if not real.is_relative_to(real_root):
        logger.warning("evidence request %s/%s refused: it resolves outside %s", folder, name, real_root)
        return None
    return real if real.is_file() else None


__all__ = ["CONTENT_TYPES", "evidence_parts", "evidence_url", "resolve_evidence"]
