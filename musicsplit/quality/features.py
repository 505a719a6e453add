"""Spectro-temporal features of a separation, computed block by block.

One short-time spectrum per stem (mid channel) and one of the mixture, in
blocks of a few seconds, so memory is bounded whatever the track's length.
What is accumulated:
- how disjoint the stems are (in each time-frequency bin, the loudest stem's
  share of the stems' energy: true sources rarely share a bin; leaking or
  evenly split stems do),
- how the stems' energy compares with the mixture's per bin (stems that hold
  energy the mixture does not are cancelling each other: noise moved between
  stems; stems that together hold less share content coherently),
- how fragmented the stems are over time against the mixture (random masks
  and musical noise flicker from frame to frame; real sources do not),
- per stem, a few descriptors of what it sounds like (low band, high band,
  spectral centroid, flatness, onsets, centre panning) for stem identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BLOCK_SECONDS = 8.0  # audio analysed at a time: [stems + 1, frames, bins] stays a few MiB
FRAME_SECONDS = 0.046  # 2048 samples at 44.1 kHz
LOW_HZ = 150.0  # "low band": where bass and kick live
HIGH_HZ = 5000.0  # "high band": cymbals, hats, sibilance, noise
MAX_HZ = 11025.0  # flatness and onsets are measured below this (content above is sparse)
DESCRIPTORS = ("low", "high", "centroid", "flatness", "onsets", "centre")
_EPS = 1e-12


@dataclass
class Features:
    disjointness: float  # energy-weighted share of the loudest stem per bin: 1/S (even split) .. 1
    excess: float  # share of the stems' energy the mixture does not hold (stems cancelling)
    deficit: float  # share of the mixture's energy the stems hold coherently (content shared)
    fragmentation: float  # stems' frame-to-frame change over the mixture's (1: as smooth as the mix)
    descriptors: np.ndarray  # [S, len(DESCRIPTORS)]
    frames: int


class _Sums:
    """Running sums over blocks; every ratio is taken once at the end."""

    def __init__(self, stems: int):
        z = lambda: np.zeros(stems)  # noqa: E731
        self.max_share = self.stem_energy = self.excess = self.deficit = self.mix_energy = 0.0
        self.flux_mix = self.mag_mix = 0.0
        self.flux, self.mag = z(), z()
        self.low, self.high, self.total, self.centroid = z(), z(), z(), z()
        self.flat, self.flat_weight, self.onsets = z(), z(), z()
        self.cross, self.power = z(), z()
        self.frames = 0


def frame_length(sample_rate: int) -> int:
    return 1 << max(8, round(math.log2(FRAME_SECONDS * sample_rate)))


def _spectra(signals: np.ndarray, n_fft: int, window: np.ndarray) -> np.ndarray:
    """|STFT|^2 of [K, T] signals, hop n_fft/2: [K, frames, bins] float32."""
    hop = n_fft // 2
    frames = np.lib.stride_tricks.sliding_window_view(signals, n_fft, axis=-1)[:, ::hop]
    spec = np.fft.rfft(frames * window, axis=-1)
    return (spec.real ** 2 + spec.imag ** 2).astype(np.float32)


def _accumulate(sums: _Sums, mix_block: np.ndarray, stem_block: np.ndarray, n_fft: int,
                window: np.ndarray, freqs: np.ndarray) -> None:
    mid = stem_block.mean(axis=1)  # [S, T]
    power = _spectra(np.concatenate([mid, mix_block.mean(axis=0, keepdims=True)]), n_fft, window)
    stems, mix = power[:-1], power[-1]
    if stems.shape[1] < 2:
        return
    total = stems.sum(axis=0)
    sums.max_share += float(stems.max(axis=0).sum())
    sums.stem_energy += float(total.sum())
    sums.mix_energy += float(mix.sum())
    sums.excess += float(np.maximum(total - mix, 0).sum())
    sums.deficit += float(np.maximum(mix - total, 0).sum())

    mags, mag_mix = np.sqrt(stems), np.sqrt(mix)
    sums.flux += np.abs(np.diff(mags, axis=1)).sum(axis=(1, 2))
    sums.mag += mags[:, 1:].sum(axis=(1, 2))
    sums.flux_mix += float(np.abs(np.diff(mag_mix, axis=0)).sum())
    sums.mag_mix += float(mag_mix[1:].sum())

    band = stems.sum(axis=1)  # [S, bins]: long-term spectrum of the block
    sums.low += band[:, freqs < LOW_HZ].sum(axis=1)
    sums.high += band[:, freqs >= HIGH_HZ].sum(axis=1)
    sums.total += band.sum(axis=1)
    sums.centroid += band @ np.log2(np.maximum(freqs, 20.0))

    upto = freqs < MAX_HZ
    p = stems[:, :, upto] + _EPS
    frame_energy = p.mean(axis=2)  # [S, frames]
    flat = np.exp(np.log(p).mean(axis=2)) / frame_energy
    sums.flat += (flat * frame_energy).sum(axis=1)
    sums.flat_weight += frame_energy.sum(axis=1)
    # Onsets: energy that rises by more than 6 dB from one frame to the next (hits, not notes).
    rise = np.maximum(p[:, 1:] - 4 * p[:, :-1], 0).sum(axis=2)
    sums.onsets += rise.sum(axis=1)

    if stem_block.shape[1] >= 2:
        left, right = stem_block[:, 0].astype(np.float64), stem_block[:, 1].astype(np.float64)
        sums.cross += 2 * np.einsum("st,st->s", left, right)
        sums.power += np.einsum("st,st->s", left, left) + np.einsum("st,st->s", right, right)
    else:
        energy = np.einsum("st,st->s", mid, mid).astype(np.float64)
        sums.cross += energy
        sums.power += energy
    sums.frames += stems.shape[1]


def features(mixture: np.ndarray, stems: np.ndarray, sample_rate: int) -> Features:
    """Features of stems [S, C, T] against mixture [C, T], block by block (finite input only)."""
    n_fft = frame_length(sample_rate)
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    hop = n_fft // 2
    block = max(int(BLOCK_SECONDS * sample_rate) // hop, 4) * hop
    sums = _Sums(stems.shape[0])
    for start in range(0, mixture.shape[-1], block):
        stop = min(start + block + n_fft - hop, mixture.shape[-1])  # frames straddling the boundary
        if stop - start < n_fft:
            break
        _accumulate(sums, np.asarray(mixture[:, start:stop], np.float32),
                    np.asarray(stems[:, :, start:stop], np.float32), n_fft, window, freqs)
    return _finish(sums)


def _ratio(num, den, empty: float = 0.0):
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.where(den > _EPS, num / np.maximum(den, _EPS), empty)


def _finish(s: _Sums) -> Features:
    stems = len(s.total)
    onsets = _ratio(s.onsets, s.flat_weight)
    descriptors = np.stack([
        np.log10(_ratio(s.low, s.total) + 1e-4),
        np.log10(_ratio(s.high, s.total) + 1e-4),
        _ratio(s.centroid, s.total, empty=np.log2(1000.0)),
        _ratio(s.flat, s.flat_weight, empty=1.0),
        np.log10(onsets + 1e-4),
        _ratio(s.cross, s.power, empty=0.0),
    ], axis=1)
    mix_flux = float(_ratio(s.flux_mix, s.mag_mix))
    stem_flux = float(_ratio(s.flux.sum(), s.mag.sum()))
    return Features(
        disjointness=float(_ratio(s.max_share, s.stem_energy, empty=1.0 / max(stems, 1))),
        excess=float(_ratio(s.excess, s.stem_energy)),
        deficit=float(_ratio(s.deficit, s.mix_energy)),
        fragmentation=float(stem_flux / mix_flux) if mix_flux > _EPS else 1.0,
        descriptors=descriptors,
        frames=s.frames,
    )
