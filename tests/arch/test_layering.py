"""The layering of docs/architecture.md is enforced by import-linter, and the check can fail.

``make lint`` runs ``lint-imports`` on the repository; these tests run it too, then plant
deliberate violations in a copy of the packages and show that each one breaks its contract.
import-linter reads imports inside functions as well, so a lazy ``import torch`` on the
device side is caught like a module-level one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("edge_asd", "engines", "trainer")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed in this venv (pip install 'edge-asd[test]')")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(exe), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_repository_keeps_every_contract() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def _plant(root: Path, module: str, line: str) -> None:
    path = root / module
    text = path.read_text()
    path.write_text(text + f"\n\ndef _planted_violation():\n    {line}\n")


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("edge_asd/levels.py", "import torch  # noqa", "device side"),
        ("edge_asd/daemon/listen.py", "import trainer.model  # noqa", "device side"),
        ("edge_asd/core/scoring.py", "import scipy.stats  # noqa", "core"),
        ("trainer/metrics.py", "import edge_asd.cli  # noqa", "trainer"),
    ],
)
def test_a_planted_violation_breaks_its_contract(tree_copy: Path, module: str, line: str, contract: str) -> None:
    assert _lint_imports(tree_copy).returncode == 0, "the untouched copy must pass first"
    _plant(tree_copy, module, line)
    result = _lint_imports(tree_copy)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts")[-1]
    assert contract in broken, result.stdout
