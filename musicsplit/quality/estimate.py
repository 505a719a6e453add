"""The reference-free quality estimate: components, and their calibrated combination.

Components, each in 0..1 (1 = no sign of trouble):
- consistency: do the stems add back up to the input (consistency.py);
- leakage: how much content the stems share coherently (cross-talk, an even split);
- identity: does each named stem look like its source (bass holds the low band,
  drums are percussive and broadband, vocals and other are tonal...): the
  probability that the names are the right way round, against every other
  assignment of the same stems;
- artefacts: energy the stems hold that the mixture does not (noise moved
  between stems, smearing) and frame-to-frame flicker (random masks);
- integrity: stems silent while the input is not, clipped samples; NaN/Inf is 0.
The score is a linear model of the components fitted to true SDR on a
calibration corpus (benchmarks/quality_estimate.py), read from a versioned
file shipped with the package: `estimated_sdr_db`, and `score` in 0..1 as a
logistic of it (0.5 at CENTRE_DB).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import numpy as np

from musicsplit.quality.consistency import (
    SILENCE_DBFS,
    SNR_CAP_DB,
    _snr_db,
    consistency_score,
    energies,
    energy_share,
    rms_dbfs,
)
from musicsplit.quality.features import Features, features

COMPONENTS = ("consistency", "leakage", "identity", "artefacts", "integrity")
CALIBRATION_FILE = "calibration.json"
MAX_PERMUTED_STEMS = 6  # identity compares every assignment of the known stems: 6! = 720 at most


@dataclass
class Calibration:
    """What the calibration fitted (calibration.json): read once per process."""

    version: str
    descriptor_mean: dict[str, list[float]]  # per stem name, per features.DESCRIPTORS
    descriptor_std: dict[str, list[float]]
    temperature: float  # identity log-likelihoods are divided by this (naive Bayes is overconfident)
    deficit_true: float  # typical `deficit` of true stems (leakage 1 at or below it)
    excess_true: float  # typical `excess` of true stems (artefacts 1 at or below it)
    weights: dict[str, float]  # per component, on its value
    intercept: float
    centre_db: float  # estimated SDR where score = 0.5
    scale_db: float
    fit: dict = field(default_factory=dict)  # corpus, held-out figures: for people, not for the code

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@lru_cache(maxsize=1)
def shipped_calibration() -> Calibration:
    text = resources.files("musicsplit.quality").joinpath(CALIBRATION_FILE).read_text()
    return Calibration(**json.loads(text))


@dataclass
class QualityReport:
    score: float  # the estimate, 0..1
    snr_db: float  # mixture consistency
    energy_share: dict[str, float] = field(default_factory=dict)
    silent_stems: list[str] = field(default_factory=list)
    nonfinite: bool = False
    silent_input: bool = False
    components: dict[str, float] = field(default_factory=dict)
    estimated_sdr_db: float = -10.0
    clipped_stems: list[str] = field(default_factory=list)
    calibration: str = ""

    def issues(self) -> list[str]:
        """What is wrong with the output itself: `non_finite`, `silent_stem` (a stem
        silent while the input is not; silence in, silence out is no issue)."""
        found = ["non_finite"] if self.nonfinite else []
        if self.silent_stems and not self.silent_input:
            found.append("silent_stem")
        return found

    def as_parameters(self) -> dict[str, float | str | bool]:
        """Flat scalars for v2 response parameters (gRPC parameters hold no lists or maps)."""
        params: dict[str, float | str | bool] = {
            "quality_score": round(self.score, 4),
            "quality_estimated_sdr_db": round(self.estimated_sdr_db, 2),
            "quality_calibration": self.calibration,
            "mixture_snr_db": round(self.snr_db, 2),
            "silent_stems": ",".join(self.silent_stems),
            "clipped_stems": ",".join(self.clipped_stems),
            "nonfinite_output": self.nonfinite,
        }
        for name, value in self.components.items():
            params[f"quality_{name}"] = round(value, 4)
        for name, share in self.energy_share.items():
            params[f"energy_share_{name}"] = round(share, 4)
        return params


def identity_score(descriptors: np.ndarray, names: list[str], cal: Calibration,
                   audible: np.ndarray | None = None) -> float:
    """Probability that `names` label the stems right, against every other assignment.

    Each stem's descriptors are scored under each known source's Gaussian
    (naive Bayes, fitted on true stems); the given assignment's likelihood is
    compared with all permutations of the audible stems whose names are known.
    Swapped stems, or stems that all look alike (an even split), score low.
    """
    audible = np.ones(len(names), bool) if audible is None else audible
    known = [i for i, n in enumerate(names) if n in cal.descriptor_mean and audible[i]]
    if len(known) < 2:
        return 1.0  # nothing to tell apart (one stem, or unknown sources)
    known = known[:MAX_PERMUTED_STEMS]
    classes = [names[i] for i in known]
    mean = np.array([cal.descriptor_mean[c] for c in classes])  # [K, D]
    std = np.array([cal.descriptor_std[c] for c in classes])
    x = descriptors[known]  # [K, D]
    # loglik[i, k]: stem i under class k
    z = (x[:, None, :] - mean[None]) / std[None]
    loglik = -0.5 * np.sum(z * z, axis=2) - np.sum(np.log(std), axis=1)[None]
    loglik /= cal.temperature
    idx = np.arange(len(known))
    totals = np.array([loglik[idx, list(p)].sum() for p in itertools.permutations(idx)])
    given = loglik[idx, idx].sum()
    top = totals.max()
    return float(np.exp(given - top) / np.sum(np.exp(totals - top)))


def components_of(f: Features, names: list[str], cal: Calibration, *, snr_db: float,
                  audible: np.ndarray, silent_share: float, clipped_share: float) -> dict[str, float]:
    stems = len(names)
    even = 1.0 - 1.0 / max(stems, 2)  # the deficit of an even split
    leakage = 1.0 - (f.deficit - cal.deficit_true) / max(even - cal.deficit_true, 1e-6)
    artefacts = (1.0 - (f.excess - cal.excess_true) / max(0.5 - cal.excess_true, 1e-6)
                 - 2.0 * max(0.0, abs(math.log(max(f.fragmentation, 1e-6))) - 0.1))
    integrity = 1.0 - silent_share - min(1.0, 100.0 * clipped_share)
    values = {
        "consistency": consistency_score(snr_db),
        "leakage": leakage,
        "identity": identity_score(f.descriptors, names, cal, audible),
        "artefacts": artefacts,
        "integrity": integrity,
    }
    return {k: float(min(max(v, 0.0), 1.0)) for k, v in values.items()}


def combine(components: dict[str, float], cal: Calibration) -> tuple[float, float]:
    """(estimated SDR dB within -10..25, score 0..1) from the components."""
    est = cal.intercept + sum(w * components[k] for k, w in cal.weights.items())
    est = float(min(max(est, -10.0), 25.0))
    return est, float(1.0 / (1.0 + math.exp(-(est - cal.centre_db) / cal.scale_db)))


def assess(mixture: np.ndarray, stems: np.ndarray, names: list[str], sample_rate: int = 44100,
           calibration: Calibration | None = None) -> QualityReport:
    """Reference-free quality of one separation: mixture [C, T], stems [S, C, T].

    Memory stays bounded by block size whatever the length; a few percent of
    a Demucs separation's compute (docs/quality.md). Raises ValueError only
    for stems that do not match the mixture's shape or the names.
    """
    if len(names) != len(stems):
        raise ValueError(f"{len(names)} stem names for {len(stems)} stems")
    cal = calibration or shipped_calibration()
    e = energies(mixture, stems)
    if e.nonfinite:
        zeros = {k: 0.0 for k in COMPONENTS}
        return QualityReport(0.0, -SNR_CAP_DB, {n: 0.0 for n in names}, [], True,
                             components=zeros, calibration=cal.version)
    snr = _snr_db(e.mixture, e.residual)
    levels = rms_dbfs(e.stems, e.samples)
    silent = [n for n, db in zip(names, levels) if db < SILENCE_DBFS]
    silent_input = float(rms_dbfs(e.mixture, e.samples)) < SILENCE_DBFS
    clipped = [n for n, c in zip(names, e.clipped) if c > 0]
    shares = {n: float(s) for n, s in zip(names, energy_share(e.stems))}
    f = features(mixture, stems, sample_rate)
    comps = components_of(
        f, list(names), cal, snr_db=snr, audible=levels >= SILENCE_DBFS,
        silent_share=0.0 if silent_input else len(silent) / len(names),
        clipped_share=float(np.sum(e.clipped)) / max(e.samples * len(names), 1))
    est, score = combine(comps, cal)
    if silent_input and not np.any(levels >= SILENCE_DBFS):
        est, score = 25.0, 1.0  # silence in, silence out: nothing to separate, nothing wrong
    return QualityReport(score, snr, shares, silent, False, silent_input, comps, est, clipped, cal.version)
