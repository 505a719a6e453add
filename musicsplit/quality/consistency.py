"""Mixture consistency (do the stems add back up to the input?), energy shares, and SDR.

Consistency is one component of the reference-free estimate (estimate.py):
almost every separator's output adds back up, so on its own it ranks nothing.
With ground truth (the golden set) quality is the MDX challenge / Demucs SDR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SNR_CAP_DB = 100.0  # |SNR| is reported within +-cap: "exactly consistent" and "all residual"
SILENCE_DBFS = -60.0  # a stem whose RMS is below this is silent
CLIP_LEVEL = 0.999  # |sample| at or above this is clipped (full scale is 1.0)
_BLOCK = 1 << 18  # samples per channel summed at a time: float64 temporaries stay small


@dataclass
class Energies:
    """Sums of squares over the whole signal, accumulated block by block in float64."""

    mixture: float
    residual: float
    stems: np.ndarray  # [S]
    nonfinite: bool
    samples: int  # channels x samples per stem
    clipped: np.ndarray  # [S] samples at or above CLIP_LEVEL per stem


def energies(mixture: np.ndarray, stems: np.ndarray) -> Energies:
    """One pass over mixture [C, T] and stems [S, C, T], memory bounded by block size."""
    mixture = np.asarray(mixture)
    stems = np.asarray(stems)
    if stems.ndim != 3 or stems.shape[1:] != mixture.shape:
        raise ValueError(f"stems {list(stems.shape)} do not match mixture {list(mixture.shape)} as [S, C, T]")
    e_mix = e_res = 0.0
    e_stems = np.zeros(stems.shape[0])
    clipped = np.zeros(stems.shape[0], dtype=np.int64)
    nonfinite = False
    for start in range(0, mixture.shape[-1], _BLOCK):
        mix = mixture[..., start:start + _BLOCK].astype(np.float64)
        block = stems[..., start:start + _BLOCK].astype(np.float64)
        if not np.isfinite(block).all():
            nonfinite = True
            continue  # the verdict is already 0; keep the sums finite
        e_mix += float(np.sum(mix * mix))
        e_res += float(np.sum(np.square(mix - block.sum(0))))
        e_stems += np.einsum("sct,sct->s", block, block)
        clipped += np.count_nonzero(np.abs(block) >= CLIP_LEVEL, axis=(1, 2))
    return Energies(e_mix, e_res, e_stems, nonfinite, mixture.size, clipped)


def _snr_db(e_mix: float, e_res: float) -> float:
    if e_res <= e_mix * 10 ** (-SNR_CAP_DB / 10):
        return SNR_CAP_DB  # also silent in, silent out
    if e_mix <= 0.0:
        return -SNR_CAP_DB  # silent in, something out
    return float(np.clip(10 * math.log10(e_mix / e_res), -SNR_CAP_DB, SNR_CAP_DB))


def mixture_snr_db(mixture: np.ndarray, stems: np.ndarray) -> float:
    """10*log10(||mix||^2 / ||mix - sum(stems)||^2), within +-100 dB.

    100 dB when the stems add back up exactly (including silence in and out);
    -100 dB when the stems hold NaN/Inf or the input is silent but they are not.
    """
    e = energies(mixture, stems)
    return -SNR_CAP_DB if e.nonfinite else _snr_db(e.mixture, e.residual)


def energy_share(stem_energies: np.ndarray) -> np.ndarray:
    """Each stem's fraction of the total stem energy (zeros when all are silent)."""
    total = float(np.sum(stem_energies))
    return stem_energies / total if total > 0 else np.zeros_like(stem_energies)


def rms_dbfs(energy: float | np.ndarray, samples: int) -> np.ndarray:
    return 10 * np.log10(np.maximum(np.asarray(energy) / max(samples, 1), 1e-20))


def consistency_score(snr_db: float) -> float:
    """Mixture-consistency SNR as 0..1: `1 - 10**(-snr/20)`, clipped at 0.

    One minus the residual's amplitude relative to the mixture's: the share of
    the input the stems account for. 0 dB -> 0, 6 dB -> 0.5, 20 dB -> 0.90,
    40 dB -> 0.99; monotone in SNR; NaN -> 0.
    """
    if not math.isfinite(snr_db):
        return 0.0
    return float(min(max(0.0, 1.0 - 10 ** (-snr_db / 20)), 1.0))


def sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """SDR in dB as the MDX challenge and Demucs compute it (demucs.evaluate.new_sdr).

    10*log10((||ref||^2 + 1e-7) / (||ref - est||^2 + 1e-7)), summed over
    channels and time; no projection or allowed distortion filter (BSS-eval v4
    SDR is not this).
    """
    ref = np.asarray(reference, dtype=np.float64)
    est = np.asarray(estimate, dtype=np.float64)
    if ref.shape != est.shape:
        raise ValueError(f"reference {list(ref.shape)} and estimate {list(est.shape)} differ in shape")
    delta = 1e-7
    return float(10 * np.log10((np.sum(ref * ref) + delta) / (np.sum(np.square(ref - est)) + delta)))


def sdr_per_stem(references: dict[str, np.ndarray], estimates: dict[str, np.ndarray]) -> dict[str, float]:
    """SDR of each stem present in both; estimates are cropped/padded to the reference length."""
    out = {}
    for name, ref in references.items():
        if name not in estimates:
            continue
        est = np.asarray(estimates[name])
        length = ref.shape[-1]
        if est.shape[-1] != length:
            est = est[..., :length] if est.shape[-1] > length else np.pad(
                est, [(0, 0)] * (est.ndim - 1) + [(0, length - est.shape[-1])])
        out[name] = sdr(ref, est)
    return out
