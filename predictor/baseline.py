"""A weight-free DSP separator: the offline demo's model, the fallback, the quality floor.

Soft time-frequency masks on one STFT of the stereo mixture:
- drums: the percussive part of a harmonic/percussive split (median filters
  across time for harmonic, across frequency for percussive; Fitzgerald 2010);
- bass: the harmonic part below ~200-350 Hz (a raised-cosine crossover);
- vocals: the harmonic part between ~200 Hz and 8 kHz that is the same in
  both channels (centre-panned: left/right similarity, Avendano & Jot 2004);
- other: what is left, computed as mixture minus the three others, so the
  stems add back up to the input exactly (mixture consistency by design).
It is far below Demucs but costs no GPU and no weights, and it is honest.
"""

from __future__ import annotations


import numpy as np
from scipy.ndimage import median_filter
from scipy.signal import ShortTimeFFT
from scipy.signal.windows import hann

N_FFT = 4096
HOP = 2048
HARMONIC_FRAMES = 9  # median over ~0.4 s: sustained partials survive, hits do not
PERCUSSIVE_BINS = 17  # median over ~180 Hz: broadband hits survive, partials do not
# Below LOW_HZ partials are sparse and a kick is narrow: a shorter median tells them apart.
LOW_HZ, PERCUSSIVE_BINS_LOW = 500.0, 5
BASS_HZ = (200.0, 350.0)  # fully bass below, no bass above, raised-cosine crossover
VOCAL_HZ = (200.0, 8000.0)
CENTRE_SHARPNESS = 8  # similarity ** this: only bins nearly identical in L and R count as centre
BLOCK_SECONDS = 30.0
CONTEXT_SECONDS = 1.0  # extra audio each side of a block so its edges see full context


def _crossover(freqs: np.ndarray, low: float, high: float) -> np.ndarray:
    """1 below `low`, 0 above `high`, raised cosine in between."""
    x = np.clip((freqs - low) / (high - low), 0.0, 1.0)
    return 0.5 * (1 + np.cos(np.pi * x))


class DSPBaseline:
    name = "dsp-baseline"
    sources = ["drums", "bass", "other", "vocals"]
    samplerate = 44100
    audio_channels = 2

    def __init__(self):
        self._stft = ShortTimeFFT(hann(N_FFT, sym=False).astype(np.float32), HOP, self.samplerate)
        freqs = self._stft.f[:, None]
        self._low_bins = int(np.searchsorted(self._stft.f, LOW_HZ))
        self._bass_band = _crossover(freqs, *BASS_HZ)
        self._vocal_band = (1 - _crossover(freqs, VOCAL_HZ[0] * 0.8, VOCAL_HZ[0])) * _crossover(
            freqs, VOCAL_HZ[1], VOCAL_HZ[1] * 1.25)

    def separate(
        self,
        samples: np.ndarray,
        *,
        shifts: int = 1,
        overlap: float = 0.25,
        segment: float | None = None,
    ) -> np.ndarray:
        """[C, T] float32 at 44.1 kHz in, [4, C, T] float32 out (drums, bass, other, vocals).

        `segment` sets the block length in seconds (memory stays bounded by
        it); `shifts` and `overlap` are accepted for interface parity with
        Demucs and ignored: the masks are deterministic and blocks are joined
        with fixed context, not overlap-add.
        """
        mix = np.asarray(samples, dtype=np.float32)
        if mix.ndim != 2:
            raise ValueError(f"expected [channels, samples], got shape {list(mix.shape)}")
        length = mix.shape[-1]
        # Blocks and context are whole hops, so every block's STFT frames sit where
        # the whole signal's would: the masks, and the stems, do not depend on blocking.
        block = max(1, round((segment or BLOCK_SECONDS) * self.samplerate / HOP)) * HOP
        context = round(CONTEXT_SECONDS * self.samplerate / HOP) * HOP
        out = np.empty((len(self.sources), *mix.shape), np.float32)
        starts = range(0, length, block) if length else []
        for i, start in enumerate(starts):
            end = min(length, start + block)
            lo, hi = max(0, start - context), min(length, end + context)
            stems = self._separate_block(mix[:, lo:hi])
            out[:, :, start:end] = stems[:, :, start - lo:end - lo]
        # Other is the remainder, so the stems sum to the input whatever the masks did.
        out[2] = mix - out[0] - out[1] - out[3]
        return out

    def _separate_block(self, mix: np.ndarray) -> np.ndarray:
        n = mix.shape[-1]
        if n < N_FFT:  # the STFT needs half a window at least: pad, crop at the end
            mix = np.pad(mix, ((0, 0), (0, N_FFT - n)))
        spec = self._stft.stft(mix)  # [C, F, frames]
        power = spec.real**2 + spec.imag**2
        total = power.sum(0)
        harmonic = median_filter(total, size=(1, HARMONIC_FRAMES), mode="nearest")
        percussive = median_filter(total, size=(PERCUSSIVE_BINS, 1), mode="nearest")
        low = self._low_bins
        percussive[:low] = median_filter(total[:low + PERCUSSIVE_BINS_LOW], size=(PERCUSSIVE_BINS_LOW, 1),
                                         mode="nearest")[:low]
        # Soft split: a bin is drums in proportion to P^2 / (P^2 + H^2) (Fitzgerald's Wiener-like mask).
        p2, h2 = percussive**2, harmonic**2
        drums = p2 / (p2 + h2 + 1e-20)
        tonal = 1.0 - drums
        bass = tonal * self._bass_band
        if mix.shape[0] == 2:
            cross = (spec[0] * np.conj(spec[1])).real
            similarity = np.clip(2 * cross / (power[0] + power[1] + 1e-20), 0.0, 1.0)
        else:  # mono has no panning: everything is centre
            similarity = np.ones_like(total)
        vocals = tonal * (1 - self._bass_band) * self._vocal_band * similarity**CENTRE_SHARPNESS
        masks = np.stack([drums, bass, vocals])[:, None]  # [3, 1, F, frames]
        stems = self._stft.istft(masks * spec[None], k1=mix.shape[-1])[..., :n]  # [3, C, n]
        out = np.empty((4, mix.shape[0], n), np.float32)
        out[0], out[1], out[3] = stems
        return out
