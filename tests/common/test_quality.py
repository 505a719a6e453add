import math

import numpy as np
import pytest

from musicsplit import quality
from musicsplit.golden import STEMS, golden_item
from musicsplit.quality import damage
from musicsplit.quality.calibration import auc, observe, scores
from scipy.stats import spearmanr

NAMES = list(STEMS)


@pytest.fixture(scope="module")
def item():
    # Seed 2: never part of the calibration corpus (seeds 0 and 1, benchmarks/quality_estimate.py).
    return golden_item(0, seconds=3.0, seed=2)


def _true(item):
    return np.stack([item.stems[k] for k in STEMS])


def _noise(seed=0, channels=2, length=44100):
    return np.random.default_rng(seed).standard_normal((4, channels, length)).astype(np.float32) * 0.1


def test_true_stems_score_high_and_every_component_is_reported(item):
    report = quality.assess(item.mixture, _true(item), NAMES, sample_rate=44100)
    assert report.score > 0.9 and report.estimated_sdr_db > 10
    assert set(report.components) == set(quality.COMPONENTS)
    assert all(v > 0.8 for v in report.components.values()), report.components
    assert report.calibration == quality.shipped_calibration().version


def test_mixture_consistent_damage_scores_below_the_truth(item):
    """Every one of these adds back up to the input: consistency alone scored them all 1.0."""
    stems, mix = _true(item), item.mixture
    rng = np.random.default_rng(0)
    truth = quality.assess(mix, stems, NAMES)
    damaged = {
        "leakage": (damage.leakage(mix, stems, rng, 0.65), "leakage"),
        "even split": (damage.even_split(mix, stems, rng, None), "leakage"),
        "drums/bass swapped": (damage.permute(mix, stems, rng, (1, 0, 2, 3)), "identity"),
        "vocals/other swapped": (damage.permute(mix, stems, rng, (0, 1, 3, 2)), "identity"),
        "everything in other": (damage.one_stem(mix, stems, rng, 2), "integrity"),
        "noise moved": (damage.moved_noise(mix, stems, rng, 0.0), "artefacts"),
    }
    for name, (out, component) in damaged.items():
        np.testing.assert_allclose(out.sum(0), mix, atol=1e-3, err_msg=name)
        report = quality.assess(mix, out.astype(np.float32), NAMES)
        assert report.components["consistency"] > 0.99, name
        assert report.score < truth.score - 0.25, (name, report.score)
        assert report.components[component] < truth.components[component] - 0.3, (name, report.components)


def test_score_falls_as_leakage_grows(item):
    stems, rng = _true(item), np.random.default_rng(0)
    scores = [quality.assess(item.mixture, damage.leakage(item.mixture, stems, rng, share), NAMES).score
              for share in (0.05, 0.2, 0.35, 0.5, 0.65)]
    assert scores == sorted(scores, reverse=True) and scores[0] - scores[-1] > 0.4


def test_shipped_calibration_ranks_a_held_out_set(item):
    """The shipped weights on tracks they were not fitted on (seed 2), cheap damages only."""
    cheap = ("clean", "leakage", "swap", "even split", "one stem", "noise moved")
    obs = []
    for track in (item, golden_item(1, seconds=3.0, seed=2)):
        stems = _true(track)
        for family in cheap:
            fn, variants = damage.DAMAGES[family]
            for i, v in enumerate(variants):
                out = fn(track.mixture, stems, np.random.default_rng(i), v)
                obs.append(observe(track, np.asarray(out, np.float32), family, str(v)))
    s = scores(obs, quality.shipped_calibration())
    y = np.array([o.mean_sdr for o in obs])
    healthy, broken = np.array([o.healthy for o in obs]), np.array([o.broken for o in obs])
    assert spearmanr(s, y).statistic > 0.75
    assert auc(s[healthy | broken], healthy[healthy | broken]) > 0.9


def test_nan_or_inf_in_any_stem_scores_zero():
    stems = _noise()
    mix = stems.sum(0)
    for bad in (np.nan, np.inf):
        broken = stems.copy()
        broken[2, 1, 1000] = bad
        report = quality.assess(mix, broken, NAMES)
        assert report.nonfinite and report.score == 0.0
        assert report.snr_db == -quality.SNR_CAP_DB
        assert all(v == 0.0 for v in report.components.values())
        assert all(math.isfinite(v) for v in report.energy_share.values())


def test_clipped_stems_are_named_and_lower_integrity(item):
    stems = _true(item) * 4
    mix = stems.sum(0)
    clipped = np.clip(stems, -1, 1)
    report = quality.assess(mix, clipped, NAMES)
    assert report.clipped_stems and report.components["integrity"] < 0.5
    assert quality.assess(mix / 4, stems / 4, NAMES).clipped_stems == []


def test_silent_input_and_silent_stems():
    silent = np.zeros((2, 44100), np.float32)
    report = quality.assess(silent, np.zeros((4, 2, 44100), np.float32), NAMES)
    assert report.snr_db == quality.SNR_CAP_DB and report.score == 1.0
    assert report.silent_stems == NAMES and report.issues() == []
    # Noise out of silence in is not consistent.
    assert quality.mixture_snr_db(silent, _noise()) == -quality.SNR_CAP_DB


def test_consistency_component_is_monotone_in_snr():
    stems = _noise()
    mix = stems.sum(0)
    values = []
    for noise_db in (0, 6, 20, 40):
        noise = np.random.default_rng(1).standard_normal(mix.shape).astype(np.float32)
        noise *= np.sqrt(np.sum(mix**2) / np.sum(noise**2) * 10 ** (-noise_db / 10))
        assert quality.mixture_snr_db(mix, stems + noise / 4) == pytest.approx(noise_db, abs=0.01)
        values.append(quality.assess(mix, stems + noise / 4, NAMES).components["consistency"])
    assert values == sorted(values)
    assert values[0] == pytest.approx(0.0, abs=1e-3) and values[1] == pytest.approx(0.5, abs=0.01)
    assert values[2] == pytest.approx(0.9, abs=0.01)


def test_parameters_are_flat_scalars(item):
    params = quality.assess(item.mixture, _true(item), NAMES).as_parameters()
    assert all(isinstance(v, (float, int, str, bool)) for v in params.values())
    assert {"quality_score", "quality_estimated_sdr_db", "quality_calibration", "mixture_snr_db",
            "energy_share_vocals", "silent_stems"} <= params.keys()
    assert {f"quality_{c}" for c in quality.COMPONENTS} <= params.keys()


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        quality.assess(np.zeros((2, 100)), np.zeros((4, 2, 99)), NAMES)
    with pytest.raises(ValueError):
        quality.assess(np.zeros((2, 100)), np.zeros((4, 2, 100)), NAMES[:3])


def test_short_mono_and_other_stem_sets_are_assessed():
    mono = _noise(channels=1, length=1000)  # shorter than one analysis frame
    report = quality.assess(mono.sum(0), mono, NAMES, sample_rate=16000)
    assert 0.0 <= report.score <= 1.0
    six = np.concatenate([_noise(), _noise(seed=3)[:2]])
    report = quality.assess(six.sum(0), six, NAMES + ["guitar", "piano"])
    assert 0.0 <= report.score <= 1.0 and "quality_identity" in report.as_parameters()


def test_long_input_is_summed_in_blocks_exactly():
    stems = _noise(length=3 * (1 << 18) + 17)
    noisy = stems + 0.01
    residual = (4 * 0.01) ** 2 * stems[0].size  # each of 4 stems is 0.01 off everywhere
    full = 10 * np.log10(np.sum(stems.sum(0).astype(np.float64) ** 2) / residual)
    assert quality.mixture_snr_db(stems.sum(0), noisy) == pytest.approx(full, abs=1e-3)
