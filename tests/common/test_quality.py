import math

import numpy as np
import pytest
import torch

from musicsplit import quality

NAMES = ["drums", "bass", "other", "vocals"]


def _stems(seed=0, channels=2, length=44100):
    return np.random.default_rng(seed).standard_normal((4, channels, length)).astype(np.float32) * 0.1


def test_consistent_stems_score_one_and_snr_is_capped():
    stems = _stems()
    report = quality.assess(stems.sum(0), stems, NAMES)
    assert report.snr_db == pytest.approx(quality.SNR_CAP_DB, abs=40)  # float32 rounding only
    assert report.score > 0.99
    assert not report.nonfinite and report.silent_stems == []
    assert sum(report.energy_share.values()) == pytest.approx(1.0)


def test_snr_matches_definition_and_score_is_monotone():
    stems = _stems()
    mix = stems.sum(0)
    scores = []
    for noise_db in (0, 6, 10, 20, 30, 40):
        noise = np.random.default_rng(1).standard_normal(mix.shape).astype(np.float32)
        noise *= np.sqrt(np.sum(mix**2) / np.sum(noise**2) * 10 ** (-noise_db / 10))
        snr = quality.mixture_snr_db(mix, stems + noise / 4)
        assert snr == pytest.approx(noise_db, abs=0.01)
        scores.append(quality.assess(mix, stems + noise / 4, NAMES).score)
    assert scores == sorted(scores)
    assert scores[0] == pytest.approx(0.0, abs=1e-3)
    assert scores[1] == pytest.approx(0.5, abs=0.01)
    assert scores[3] == pytest.approx(0.9, abs=0.01)
    assert scores[-1] > 0.98


def test_nan_or_inf_in_any_stem_scores_zero():
    stems = _stems()
    mix = stems.sum(0)
    for bad in (np.nan, np.inf):
        broken = stems.copy()
        broken[2, 1, 1000] = bad
        report = quality.assess(mix, broken, NAMES)
        assert report.nonfinite and report.score == 0.0
        assert report.snr_db == -quality.SNR_CAP_DB
        assert all(math.isfinite(v) for v in report.energy_share.values())


def test_silent_input_and_silent_stems():
    silent = np.zeros((2, 44100), np.float32)
    report = quality.assess(silent, np.zeros((4, 2, 44100), np.float32), NAMES)
    assert report.snr_db == quality.SNR_CAP_DB and report.score > 0.9999
    assert report.silent_stems == NAMES
    # Noise out of silence in is not consistent.
    assert quality.mixture_snr_db(silent, _stems()) == -quality.SNR_CAP_DB


def test_copying_the_mixture_into_one_stem_is_penalised():
    mix = _stems().sum(0)
    copied = np.zeros((4, *mix.shape), np.float32)
    copied[2] = mix
    report = quality.assess(mix, copied, NAMES)
    assert report.silent_stems == ["drums", "bass", "vocals"]
    assert report.energy_share["other"] == pytest.approx(1.0)
    assert report.score == pytest.approx(quality.SILENT_STEMS_PENALTY, abs=1e-3)


def test_parameters_are_flat_scalars():
    stems = _stems()
    params = quality.assess(stems.sum(0), stems, NAMES).as_parameters()
    assert all(isinstance(v, (float, int, str, bool)) for v in params.values())
    assert {"quality_score", "mixture_snr_db", "energy_share_vocals", "silent_stems"} <= params.keys()


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        quality.assess(np.zeros((2, 100)), np.zeros((4, 2, 99)), NAMES)


def test_long_input_is_summed_in_blocks_exactly():
    stems = _stems(length=3 * (1 << 18) + 17)
    noisy = stems + 0.01
    residual = (4 * 0.01) ** 2 * stems[0].size  # each of 4 stems is 0.01 off everywhere
    full = 10 * np.log10(np.sum(stems.sum(0).astype(np.float64) ** 2) / residual)
    assert quality.mixture_snr_db(stems.sum(0), noisy) == pytest.approx(full, abs=1e-3)


def new_sdr(references, estimates):
    """demucs/evaluate.py's new_sdr, verbatim (that module needs dora, a training dependency)."""
    delta = 1e-7
    num = torch.sum(torch.square(references), dim=(2, 3)) + delta
    den = torch.sum(torch.square(references - estimates), dim=(2, 3)) + delta
    return 10 * torch.log10(num / den)


def test_sdr_matches_demucs_new_sdr():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((4, 2, 20000)).astype(np.float32)
    est = ref + 0.3 * rng.standard_normal(ref.shape).astype(np.float32)
    # demucs wants [batch, sources, time, channels]
    expected = new_sdr(torch.from_numpy(ref).transpose(1, 2)[None].double(),
                       torch.from_numpy(est).transpose(1, 2)[None].double())[0]
    got = quality.sdr_per_stem(dict(zip(NAMES, ref)), dict(zip(NAMES, est)))
    assert list(got.values()) == pytest.approx(expected.tolist(), abs=1e-6)
    assert quality.sdr(ref[0], ref[0]) > 90


def test_sdr_per_stem_aligns_lengths_and_skips_missing():
    ref = {"bass": np.ones((2, 100)), "vocals": np.ones((2, 100))}
    got = quality.sdr_per_stem(ref, {"bass": np.ones((2, 120))})
    assert list(got) == ["bass"] and got["bass"] > 90
