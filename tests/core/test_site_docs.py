"""docs/site-learning.md stays in step with the indicator set and the hold-out rule it describes."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_asd.core.indicators import INDICATORS
from edge_asd.core.site.components import COMPONENTS
from edge_asd.core.site.holdout import MIN_BLOCK_S, N_FOLDS

pytestmark = pytest.mark.device

DOC = Path(__file__).resolve().parents[2] / "docs" / "site-learning.md"


def test_doc_names_every_indicator_and_component() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = [i.name for i in INDICATORS if i.kind != "band" and f"`{i.name}`" not in text]
    assert not missing, f"docs/site-learning.md does not list {missing}"
    assert all(f"`{c}`" in text for c in COMPONENTS)
    assert f"at least **{MIN_BLOCK_S:.0f} s**" in text and f"are {N_FOLDS} groups of whole segments" in text
