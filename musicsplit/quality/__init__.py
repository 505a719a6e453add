"""Separation quality: a reference-free estimate on every request, SDR with references.

`assess()` is the one entry point for the estimate (the predictor, the
gateway's shadow comparison, the CLI and the golden-set tools call it):
components in 0..1 and their calibrated combination (estimate.py), the
mixture-consistency parts it keeps (consistency.py). With ground truth
(the golden set) quality is the MDX challenge / Demucs SDR.
"""

from musicsplit.quality.consistency import (
    CLIP_LEVEL,
    SILENCE_DBFS,
    SNR_CAP_DB,
    Energies,
    consistency_score,
    energies,
    energy_share,
    mixture_snr_db,
    rms_dbfs,
    sdr,
    sdr_per_stem,
)
from musicsplit.quality.estimate import COMPONENTS, Calibration, QualityReport, assess, shipped_calibration

# Buckets of the predictor's `audio_separation_quality` and component histograms.
QUALITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)

__all__ = [
    "CLIP_LEVEL", "COMPONENTS", "QUALITY_BUCKETS", "SILENCE_DBFS", "SNR_CAP_DB", "Calibration", "Energies",
    "QualityReport", "assess", "consistency_score", "energies", "energy_share", "mixture_snr_db", "rms_dbfs",
    "sdr", "sdr_per_stem", "shipped_calibration",
]
