"""Fitting the estimate: identity templates, normalisations and the combination's weights.

A calibration corpus is a list of observations: separations of tracks whose
true stems are known (damage.py), each with its features and its true SDR.
`fit()` learns, from the training part only: the Gaussian template of each
source's descriptors (from true stems), what true stems' deficit and excess
look like, the identity temperature, and non-negative weights of a linear
model from the components to the mean clipped SDR. `ranking()` says how
well a calibration ranks another part: Spearman and AUC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import lsq_linear
from scipy.stats import rankdata, spearmanr

from musicsplit.golden import STEMS, GoldenItem
from musicsplit.quality.consistency import SILENCE_DBFS, _snr_db, energies, rms_dbfs, sdr
from musicsplit.quality.estimate import COMPONENTS, Calibration, combine, components_of
from musicsplit.quality.features import DESCRIPTORS, Features, features

SDR_RANGE_DB = (-10.0, 25.0)  # per-stem SDR is clipped to this before averaging
HEALTHY_DB, BROKEN_DB = 6.0, 0.0  # every stem at or above / some stem at or below
TEMPERATURES = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
TEMPLATE_SECONDS = 2.0  # true stems are described in pieces this long for the templates
STD_FLOOR = 0.15  # a template's spread is never narrower than this (few tracks to learn from)
CENTRE_DB, SCALE_DB = 3.0, 3.0  # score 0.5 at 3 dB estimated SDR; 0.73 at 6 dB, 0.27 at 0 dB


@dataclass
class Observation:
    track: str
    damage: str
    variant: str
    sdr: list[float]  # per stem, clipped to SDR_RANGE_DB
    features: Features
    snr_db: float
    audible: np.ndarray
    silent_share: float
    clipped_share: float

    @property
    def mean_sdr(self) -> float:
        return float(np.mean(self.sdr))

    @property
    def healthy(self) -> bool:
        return min(self.sdr) >= HEALTHY_DB

    @property
    def broken(self) -> bool:
        return min(self.sdr) <= BROKEN_DB


def observe(item: GoldenItem, stems: np.ndarray, damage: str, variant: str) -> Observation:
    """One separation of `item` (stems [S, C, T] in STEMS order) with its true SDR."""
    true = [float(np.clip(sdr(item.stems[k], stems[i]), *SDR_RANGE_DB)) for i, k in enumerate(STEMS)]
    e = energies(item.mixture, stems)
    levels = rms_dbfs(e.stems, e.samples)
    silent = int(np.sum(levels < SILENCE_DBFS))
    return Observation(item.name, damage, variant, true, features(item.mixture, stems, item.sample_rate),
                       _snr_db(e.mixture, e.residual), levels >= SILENCE_DBFS, silent / len(stems),
                       float(np.sum(e.clipped)) / max(e.samples * len(stems), 1))


def template_samples(item: GoldenItem) -> dict[str, list[np.ndarray]]:
    """Descriptors of each true stem, in TEMPLATE_SECONDS pieces (audible pieces only)."""
    stems = np.stack([item.stems[k] for k in STEMS])
    piece = int(TEMPLATE_SECONDS * item.sample_rate)
    out: dict[str, list[np.ndarray]] = {k: [] for k in STEMS}
    for start in range(0, item.mixture.shape[-1] - piece + 1, piece):
        part = stems[..., start:start + piece]
        levels = rms_dbfs(np.sum(part.astype(np.float64) ** 2, axis=(1, 2)), part[0].size)
        d = features(item.mixture[:, start:start + piece], part, item.sample_rate).descriptors
        for i, k in enumerate(STEMS):
            if levels[i] >= SILENCE_DBFS:
                out[k].append(d[i])
    return out


def components(obs: Observation, cal: Calibration) -> dict[str, float]:
    return components_of(obs.features, list(STEMS), cal, snr_db=obs.snr_db, audible=obs.audible,
                         silent_share=obs.silent_share, clipped_share=obs.clipped_share)


def _design(observations: list[Observation], cal: Calibration) -> np.ndarray:
    return np.array([[components(o, cal)[k] for k in COMPONENTS] for o in observations])


def fit(observations: list[Observation], templates: dict[str, list[np.ndarray]], version: str) -> Calibration:
    """A calibration fitted on `observations` (and the true stems' `templates`) only."""
    mean = {k: np.mean(v, axis=0).tolist() for k, v in templates.items()}
    std = {k: np.sqrt(np.var(v, axis=0) + STD_FLOOR ** 2).tolist() for k, v in templates.items()}
    clean = [o for o in observations if o.damage == "clean"]
    cal = Calibration(
        version=version, descriptor_mean=mean, descriptor_std=std, temperature=1.0,
        deficit_true=float(np.median([o.features.deficit for o in clean])),
        excess_true=float(np.median([o.features.excess for o in clean])),
        weights={k: 0.0 for k in COMPONENTS}, intercept=0.0, centre_db=CENTRE_DB, scale_db=SCALE_DB)
    y = np.array([o.mean_sdr for o in observations])
    best = None
    for temperature in TEMPERATURES:
        cal.temperature = temperature
        x = _design(observations, cal)
        # Weights >= 0: a better component never lowers the estimate; the intercept is free.
        design = np.hstack([x, np.ones((len(x), 1))])
        lower = [0.0] * len(COMPONENTS) + [-np.inf]
        w = lsq_linear(design, y, bounds=(lower, np.inf)).x
        cal.weights, cal.intercept = {k: float(v) for k, v in zip(COMPONENTS, w[:-1])}, float(w[-1])
        # The temperature is chosen for what the estimate is for: ranking, and telling broken apart.
        r = ranking(observations, cal)
        merit = (r.spearman + r.auc) / 2
        if best is None or merit > best[0]:
            best = (merit, temperature, w, float(np.sqrt(np.mean((design @ w - y) ** 2))))
    _, cal.temperature, w, rms = best
    cal.weights = {k: float(v) for k, v in zip(COMPONENTS, w[:-1])}
    cal.intercept = float(w[-1])
    cal.fit = {"observations": len(observations), "tracks": sorted({o.track for o in observations}),
               "rms_error_db": round(rms, 2), "descriptors": list(DESCRIPTORS),
               "target": f"mean over stems of SDR clipped to {SDR_RANGE_DB[0]:g}..{SDR_RANGE_DB[1]:g} dB"}
    return cal


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney), ties counted half."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass
class Ranking:
    spearman: float
    auc: float
    separations: int
    healthy: int
    broken: int


def scores(observations: list[Observation], cal: Calibration) -> np.ndarray:
    return np.array([combine(components(o, cal), cal)[1] for o in observations])


def ranking(observations: list[Observation], cal: Calibration) -> Ranking:
    """How `cal` ranks `observations`: Spearman of score vs mean clipped SDR, AUC healthy vs broken."""
    s = scores(observations, cal)
    y = np.array([o.mean_sdr for o in observations])
    healthy = np.array([o.healthy for o in observations])
    broken = np.array([o.broken for o in observations])
    both = healthy | broken
    return Ranking(float(spearmanr(s, y).statistic), auc(s[both], healthy[both]), len(observations),
                   int(healthy.sum()), int(broken.sum()))
