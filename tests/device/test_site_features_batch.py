"""A tick's site features are computed together, and each window's equal its own.

The pipeline hands every due stream's window to ``features_many`` at once (one
``block_stats_many`` for the new 1 s blocks, one ``combine_many`` and one ``profile_many``).
What must hold: each row is that window's indicators and profile computed alone from its
audio, whatever else shares the batch; a stream on whole-second windows analyses only its
newest block per hop and keeps no more than one window of blocks; a window off the block grid
is analysed whole and caches nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_asd.core import indicators as ind
from edge_asd.core import spectra
from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SAMPLES
from edge_asd.core.synth import MachineSoundStream

pytestmark = pytest.mark.device


def _site(name: str, bundle_dir: Path, state: Path):
    from edge_asd.daemon.site import StreamSite
    from edge_asd.site.storage import bundle_sha
    from engines.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    return StreamSite(name, state_dir=state, bundle=bundle, bundle_sha=bundle_sha(bundle), class_names=[],
                      hop_s=1.0, false_alarms_per_day=1.0)  # fmt: skip


@pytest.mark.parametrize("stack_blocks", [32, 7])
def test_a_ticks_windows_together_equal_each_window_alone(
    cached_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack_blocks: int
) -> None:
    from edge_asd.daemon import site as site_mod

    monkeypatch.setattr(site_mod, "STACK_BLOCKS", stack_blocks)  # the blocks go through in slices of this

    rows_analysed: list[int] = []  # blocks analysed per features_many call
    original = ind.block_stats_many
    counting_on = [False]

    def counting(blocks: np.ndarray) -> list[ind.BlockStats]:
        if counting_on[0]:
            assert blocks.shape[0] <= stack_blocks
            rows_analysed[-1] += blocks.shape[0]
        return original(blocks)

    def features_many(batch: list) -> list:
        counting_on[0] = True
        rows_analysed.append(0)
        try:
            return site_mod.features_many(batch)
        finally:
            counting_on[0] = False

    monkeypatch.setattr(ind, "block_stats_many", counting)
    hops = 4
    length = WINDOW_SAMPLES + hops * SAMPLE_RATE + 777
    audio = {
        "fan": MachineSoundStream("fan", 0, seed=3).read(length),
        "pump": MachineSoundStream("pump", 1, seed=5).read(length) + 0.2,  # a DC offset
        "valve": MachineSoundStream("valve", 0, seed=7).read(length),
    }
    audio["pump"][SAMPLE_RATE : SAMPLE_RATE + 4000] = 0.0  # a silent stretch inside the windows
    sites = {name: _site(name, cached_bundle, tmp_path / "state") for name in audio}
    for hop in range(hops):
        items = []
        for name, x in audio.items():
            # fan and pump end on whole seconds (blocks cached); valve 777 samples off the grid.
            end = WINDOW_SAMPLES + hop * SAMPLE_RATE + (777 if name == "valve" else 0)
            items.append((sites[name], x[end - WINDOW_SAMPLES : end].copy(), end))
        order = [2, 0, 1] if hop % 2 else [0, 1, 2]  # which streams share the batch, in which order
        batch = [items[k] for k in order]
        got = features_many(batch)
        assert len(got) == len(batch)
        for (site, window, _), (indicators, profile) in zip(batch, got):
            np.testing.assert_allclose(indicators, ind.compute(window), rtol=1e-10, atol=1e-12, err_msg=site.stream)
            np.testing.assert_allclose(profile, spectra.compute_profile(window), rtol=1e-6, atol=1e-6,
                                       err_msg=site.stream)  # fmt: skip
            assert indicators.shape == (len(ind.INDICATORS),) and np.all(np.isfinite(indicators))
            # Own arrays, not rows of the tick's: rows kept for an event or a live
            # re-enrolment must not keep every other stream's features alive.
            assert indicators.base is None and profile.base is None
    # First hop: ten blocks for each of the three; then one new block each for fan and pump,
    # and valve's ten again (off the grid nothing is reused).
    assert rows_analysed == [30] + [12] * (hops - 1)
    assert len(sites["fan"]._blocks) == ind.BLOCKS_PER_WINDOW
    assert len(sites["pump"]._blocks) == ind.BLOCKS_PER_WINDOW
    assert sites["valve"]._blocks == {}
    # One window alone is the same computation.
    end = WINDOW_SAMPLES + hops * SAMPLE_RATE
    window = audio["fan"][end - WINDOW_SAMPLES : end]
    one = features_many([(sites["fan"], window, end)])[0]
    np.testing.assert_allclose(one[0], ind.compute(window), rtol=1e-10, atol=1e-12)
    assert rows_analysed[-1] == 1
    np.testing.assert_array_equal(sites["pump"].features(audio["pump"][end - WINDOW_SAMPLES : end], end)[0],
                                  ind.compute(audio["pump"][end - WINDOW_SAMPLES : end]))  # fmt: skip


def test_no_windows_is_no_work() -> None:
    from edge_asd.daemon.site import features_many

    assert features_many([]) == []
