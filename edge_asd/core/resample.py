"""Streaming rational resampler (polyphase, Kaiser-windowed sinc), numpy only.

Why our own: the device has no scipy, and ``edge_asd.core.audio_io.resample`` works on whole
clips. Capture arrives in blocks of arbitrary size, and a window must not change depending on
where the block boundaries fell, so this resampler keeps the last ``taps - 1`` input samples
between calls and numbers its outputs globally: processing a signal block by block gives the
same samples as processing it at once (up to float32 rounding of the dot products).

Definition (``L`` = up, ``M`` = down, ``h`` the prototype low-pass of odd length ``N`` at the
upsampled rate, ``D = (N - 1) / 2``): output ``m`` is

    y[m] = sum_i h[i] * x_up[m*M + D - i],   x_up[j*L] = x[j], zero elsewhere,

which with the ``D`` advance is time-aligned: output ``m`` sits at input position ``m*M/L``.
Input before the first sample counts as zero. Output ``m`` is emitted once input index
``floor((m*M + D) / L)`` has arrived, so the latency is about half the filter.
"""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_HALF_WIDTH = 32
"""Zero crossings of the sinc on each side, counted at the lower of the two rates."""
DEFAULT_BETA = 8.6
"""Kaiser beta: about 85 dB stop-band attenuation."""
DEFAULT_ROLLOFF = 0.95
"""Cutoff as a fraction of the lower Nyquist frequency."""

_GATHER_LIMIT = 1 << 20  # elements per (outputs, channels, taps) gather before falling back


def design_filter(
    up: int,
    down: int,
    half_width: int = DEFAULT_HALF_WIDTH,
    beta: float = DEFAULT_BETA,
    rolloff: float = DEFAULT_ROLLOFF,
) -> np.ndarray:
    """Kaiser-windowed sinc low-pass at the upsampled rate, gain ``up`` (float64, odd length).

    The cutoff is ``rolloff`` times the lower Nyquist frequency, so downsampling does not
    alias and upsampling removes the images. The ``up`` gain compensates the zero stuffing.
    """
    if up < 1 or down < 1:
        raise ValueError(f"resampling factors must be >= 1, got up={up} down={down}")
    factor = max(up, down)
    fc = 0.5 * rolloff / factor  # cycles per upsampled sample
    n_taps = 2 * half_width * factor + 1
    t = np.arange(n_taps, dtype=np.float64) - (n_taps - 1) / 2.0
    h = 2.0 * fc * np.sinc(2.0 * fc * t) * np.kaiser(n_taps, beta)
    h *= up / h.sum()
    return h


class StreamingResampler:
    """Resample multichannel float32 blocks from ``in_rate`` to ``out_rate`` with state.

    ``process(block)`` takes ``(frames, channels)`` (or ``(frames,)`` for one channel) and
    returns the newly available output frames; ``produced`` counts all outputs so far, i.e.
    the output index of the next returned frame.
    """

    def __init__(
        self,
        in_rate: int,
        out_rate: int,
        channels: int = 1,
        half_width: int = DEFAULT_HALF_WIDTH,
        beta: float = DEFAULT_BETA,
        rolloff: float = DEFAULT_ROLLOFF,
    ) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        g = math.gcd(int(in_rate), int(out_rate))
        self.in_rate, self.out_rate = int(in_rate), int(out_rate)
        self.up, self.down = self.out_rate // g, self.in_rate // g
        self.channels = int(channels)
        self.passthrough = self.up == 1 and self.down == 1
        h = design_filter(self.up, self.down, half_width, beta, rolloff)
        self.delay = (h.size - 1) // 2  # D, in upsampled samples
        self.taps = -(-h.size // self.up)  # Q: taps per polyphase branch
        padded = np.zeros(self.taps * self.up, dtype=np.float64)
        padded[: h.size] = h
        # branches[p, q] = h[p + q*L]; stored reversed along q so that a window of input
        # x[b-Q+1 .. b] (oldest first) dots directly with branches_rev[p].
        branches = padded.reshape(self.taps, self.up).T
        # Each branch gets unit DC gain so that a constant input stays exactly constant.
        branches = branches / branches.sum(axis=1, keepdims=True)
        self._branches = branches.astype(np.float32)
        self._branches_rev = np.ascontiguousarray(self._branches[:, ::-1])
        self._hist = np.zeros((self.taps - 1, self.channels), dtype=np.float32)
        self.consumed = 0
        """Input frames received so far."""
        self.produced = 0
        """Output frames emitted so far."""

    @property
    def half_span_out(self) -> int:
        """How many output samples on each side an input sample can influence (for gaps)."""
        return int(math.ceil(self.taps * self.up / (2.0 * self.down))) + 1

    def input_to_output(self, index: int) -> float:
        """Output-sample position of input sample ``index`` (time alignment)."""
        return index * self.up / self.down

    def process(self, block: np.ndarray) -> np.ndarray:
        x = np.asarray(block, dtype=np.float32)
        squeeze = x.ndim == 1
        if squeeze:
            x = x[:, None]
        if x.shape[1] != self.channels:
            raise ValueError(f"resampler built for {self.channels} channels, got {x.shape[1]}")
        n = x.shape[0]
        if self.passthrough:
            self.consumed += n
            self.produced += n
            out = x.copy()
            return out[:, 0] if squeeze else out
        buf_start = self.consumed - (self.taps - 1)
        buf = np.concatenate([self._hist, x], axis=0) if n else self._hist
        self.consumed += n
        L, M, D, Q = self.up, self.down, self.delay, self.taps
        # Outputs m with floor((m*M + D)/L) <= consumed - 1  <=>  m*M + D < consumed*L.
        m_end = max(self.produced, -((D - self.consumed * L) // M))
        k = m_end - self.produced
        out = np.zeros((k, self.channels), dtype=np.float32)
        if k:
            self._compute(buf, buf_start, self.produced, k, out)
        self.produced = m_end
        if Q > 1:
            self._hist = buf[buf.shape[0] - (Q - 1) :].copy()
        return out[:, 0] if squeeze else out

    def flush(self) -> np.ndarray:
        """Emit the outputs still held back by the filter latency, as if the input went on
        as silence, up to the time of the last input sample. Call once at the end of a
        finite input (a file); the resampler is finished afterwards."""
        target = -(-self.consumed * self.up // self.down)
        if self.passthrough or self.produced >= target:
            return np.zeros((0, self.channels), dtype=np.float32)
        pad = np.zeros(((self.taps + 1) * self.up // self.down + self.taps + 1, self.channels), np.float32)
        want = target - self.produced
        outs = []
        got = 0
        while got < want:
            y = self.process(pad)
            outs.append(y)
            got += y.shape[0]
        self.produced = target
        return np.concatenate(outs)[:want]

    def _compute(self, buf: np.ndarray, buf_start: int, m0: int, k: int, out: np.ndarray) -> None:
        """Fill ``out[j]`` with y[m0 + j]; outputs are grouped by their polyphase branch.

        Outputs ``m`` and ``m + L`` use the same branch and inputs ``M`` apart, so each group
        is a strided slice of a sliding-window view dotted with one branch, in chunks that
        bound the temporary memory; there is no Python loop per sample or per tap.
        """
        L, M, D, Q = self.up, self.down, self.delay, self.taps
        C = self.channels
        windows = None
        for r in range(min(L, k)):
            m = m0 + r
            count = (k - r + L - 1) // L
            pos = m * M + D
            phase = pos % L
            base = pos // L  # newest input index of output m
            first = base - (Q - 1) - buf_start  # buffer offset of its oldest input
            step = M  # inputs between consecutive outputs of this group (m -> m + L)
            dst = out[r::L]
            if windows is None:
                windows = np.lib.stride_tricks.sliding_window_view(buf, Q, axis=0)  # (n-Q+1, C, Q)
            taps = self._branches_rev[phase]
            # Chunks bound the temporary copy matmul makes of the strided view.
            chunk = max(1, _GATHER_LIMIT // (C * Q))
            for lo in range(0, count, chunk):
                hi = min(count, lo + chunk)
                a = first + lo * step
                dst[lo:hi] = windows[a : a + (hi - lo - 1) * step + 1 : step] @ taps
