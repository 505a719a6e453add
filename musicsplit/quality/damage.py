"""Separations of graded damage, made from true stems: the estimate's calibration corpus.

Each damage turns the true stems of a track into what a separator might
return, mixture-consistent wherever the damage allows (the stems still add
back up to the input), so mixture consistency alone cannot tell them apart.
The corpus is deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy.signal import ShortTimeFFT
from scipy.signal.windows import hann

from musicsplit.golden import STEMS, GoldenItem

N_FFT, HOP = 2048, 512  # hop n_fft/4: masks applied to the mixture resynthesise exactly


@dataclass
class Separation:
    track: str
    damage: str  # family: leakage, swap, noise, ...
    variant: str  # strength or detail within the family
    stems: np.ndarray  # [S, C, T] float32, STEMS order


def _stft() -> ShortTimeFFT:
    return ShortTimeFFT(hann(N_FFT, sym=False), HOP, 44100)


def _masked(mix: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Apply masks [S, F, frames] (summing to 1 per bin) to the mixture's STFT; [S, C, T]."""
    stft = _stft()
    spec = stft.stft(mix)  # [C, F, frames]
    out = stft.istft(masks[:, None] * spec[None], k1=mix.shape[-1])
    return out.astype(np.float32)


def _power(stems: np.ndarray) -> np.ndarray:
    spec = _stft().stft(stems)  # [S, C, F, frames]
    return (np.abs(spec) ** 2).sum(axis=1)


def _consistent(mix: np.ndarray, est: np.ndarray) -> np.ndarray:
    """Spread what the stems miss of the mixture evenly over them."""
    return (est + (mix - est.sum(axis=0)) / len(est)).astype(np.float32)


def leakage(mix, stems, rng, share):
    """Each stem keeps 1 - share of itself and takes share of the others, split evenly."""
    others = (stems.sum(axis=0, keepdims=True) - stems) / (len(stems) - 1)
    return (1 - share) * stems + share * others


def permute(mix, stems, rng, order):
    return stems[list(order)]


def even_split(mix, stems, rng, _):
    return np.repeat(mix[None] / len(stems), len(stems), axis=0)


def one_stem(mix, stems, rng, index):
    out = np.zeros_like(stems)
    out[index] = mix
    return out


def dropped(mix, stems, rng, index):
    """One stem missed: silent, its content left in `other`."""
    out = stems.copy()
    out[STEMS.index("other")] += out[index]
    out[index] = 0
    return out


def moved_noise(mix, stems, rng, snr_db):
    """White noise at snr_db below the stems' mean level, zero-sum over the stems (added here,
    taken there), so the stems still add back up to the mixture."""
    noise = rng.standard_normal(stems.shape)
    noise -= noise.mean(axis=0, keepdims=True)
    level = np.sqrt(np.mean(stems.astype(np.float64) ** 2) + 1e-12)
    noise *= level / np.sqrt(np.mean(noise ** 2)) * 10 ** (-snr_db / 20)
    return (stems + noise).astype(np.float32)


def smeared(mix, stems, rng, seconds):
    """Each stem through a decaying tail of `seconds` (transients blurred), the rest spread back."""
    n = int(seconds * 44100 * 4)
    kernel = np.exp(-np.arange(n) / (seconds * 44100))
    kernel /= np.sqrt(np.sum(kernel ** 2))
    spec_len = stems.shape[-1] + n - 1
    size = 1 << int(np.ceil(np.log2(spec_len)))
    out = np.fft.irfft(np.fft.rfft(stems, size) * np.fft.rfft(kernel, size), size)[..., :stems.shape[-1]]
    return _consistent(mix, out)


def random_masks(mix, stems, rng, alpha):
    """Random soft masks (Dirichlet alpha per bin): small alpha is near binary, large near even."""
    frames = _stft().p_num(mix.shape[-1])
    masks = rng.dirichlet([alpha] * len(stems), size=(N_FFT // 2 + 1, frames)).transpose(2, 0, 1)
    return _masked(mix, masks)


def ratio_masks(mix, stems, rng, spec):
    """A separator-like output: ratio masks from the true stems' power ** exponent, blurred over
    `blur` frames and bins, then resynthesised from the mixture (Wiener-style, graded)."""
    exponent, blur = spec
    from scipy.ndimage import uniform_filter

    power = _power(stems) ** exponent
    if blur > 1:
        power = uniform_filter(power, size=(1, blur, blur), mode="nearest")
    masks = power / (power.sum(axis=0, keepdims=True) + 1e-20)
    return _masked(mix, masks)


def ratio_masks_noisy(mix, stems, rng, snr_db):
    """Wiener masks, then noise moved between the stems: a decent separator with artefacts."""
    return moved_noise(mix, ratio_masks(mix, stems, rng, (1.0, 1)), rng, snr_db)


# family -> (function, variants); every variant a separation of one track
DAMAGES: dict[str, tuple[Callable, list]] = {
    "clean": (moved_noise, [60.0]),
    "leakage": (leakage, [0.03, 0.1, 0.2, 0.35, 0.5, 0.65]),
    "swap": (permute, [(0, 1, 3, 2), (1, 0, 2, 3), (3, 0, 1, 2), (2, 3, 0, 1)]),
    "even split": (even_split, [None]),
    "one stem": (one_stem, [2, 3]),
    "dropped stem": (dropped, [3, 0]),
    "noise moved": (moved_noise, [30.0, 20.0, 12.0, 6.0, 0.0]),
    "smeared": (smeared, [0.05, 0.3]),
    "random masks": (random_masks, [0.2, 1.0, 5.0]),
    "ratio masks": (ratio_masks, [(1.0, 1), (0.5, 1), (1.0, 9), (0.5, 5), (0.25, 9)]),
    "ratio masks + noise": (ratio_masks_noisy, [20.0, 8.0]),
}


def damaged(item: GoldenItem, seed: int = 0) -> Iterator[Separation]:
    """Every damage of DAMAGES applied to one track's true stems."""
    stems = np.stack([item.stems[k] for k in STEMS]).astype(np.float32)
    for family, (fn, variants) in DAMAGES.items():
        for i, variant in enumerate(variants):
            rng = np.random.default_rng([seed, i, len(family)])
            out = fn(item.mixture, stems, rng, variant)
            yield Separation(item.name, family, str(variant), np.asarray(out, np.float32))


def separated(item: GoldenItem, separator, family: str) -> Separation:
    """A real separator's output (the DSP baseline, a random-weight HTDemucs) on one track."""
    out = separator.separate(item.mixture)
    order = [list(separator.sources).index(k) for k in STEMS]
    return Separation(item.name, family, getattr(separator, "name", family), np.asarray(out, np.float32)[order])
