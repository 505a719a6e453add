import numpy as np
import pytest

from musicsplit.golden import STEMS, golden_set


@pytest.fixture(scope="module")
def items():
    return golden_set(n=3, seconds=4.0)


def test_same_seed_gives_identical_bits_and_other_seeds_differ(items):
    again = golden_set(n=3, seconds=4.0)
    for a, b in zip(items, again):
        assert a.name == b.name
        assert a.mixture.tobytes() == b.mixture.tobytes()
        assert all(a.stems[k].tobytes() == b.stems[k].tobytes() for k in STEMS)
    other = golden_set(n=1, seconds=4.0, seed=1)[0]
    assert not np.array_equal(other.mixture, items[0].mixture)
    assert not np.array_equal(items[1].mixture, items[0].mixture)


def test_items_are_stereo_mixtures_of_their_stems(items):
    for item in items:
        assert item.sample_rate == 44100 and item.mixture.shape == (2, 4 * 44100)
        assert item.mixture.dtype == np.float32 and item.seconds == pytest.approx(4.0)
        assert list(item.stems) == list(STEMS)
        np.testing.assert_allclose(item.mixture, sum(item.stems.values()), atol=1e-6)
        assert 0.5 < np.abs(item.mixture).max() <= 0.9 + 1e-6  # loud, never clipped
        for name, stem in item.stems.items():
            assert stem.shape == item.mixture.shape
            assert np.sqrt(np.mean(stem**2)) > 0.01, name


def _centroid_hz(x, sr=44100):
    spectrum = np.abs(np.fft.rfft(x.mean(0))) ** 2
    freqs = np.fft.rfftfreq(x.shape[-1], 1 / sr)
    return float(np.sum(freqs * spectrum) / np.sum(spectrum))


def test_stems_carry_the_cues_separators_use(items):
    for item in items:
        s = item.stems
        # vocals and bass sit in the centre, the chords are spread wide
        np.testing.assert_array_equal(s["vocals"][0], s["vocals"][1])
        np.testing.assert_array_equal(s["bass"][0], s["bass"][1])
        left, right = s["other"]
        assert abs(np.corrcoef(left, right)[0, 1]) < 0.5
        # bass is low, vocals above it
        assert _centroid_hz(s["bass"]) < 300 < _centroid_hz(s["vocals"])
        # drums are percussive: energy comes in bursts (high peak-to-RMS per 10 ms frame)
        frames = s["drums"].mean(0)[: 441 * 400].reshape(400, 441)
        energy = (frames**2).mean(1)
        assert energy.max() > 20 * np.median(energy)


def test_real_excerpts_ship_with_their_true_stems():
    from musicsplit.golden import REAL_EXCERPTS, builtin_set, real_items

    items = real_items()
    assert [i.name for i in items] == [f"real-{e}" for e in REAL_EXCERPTS]
    for item in items:
        assert item.sample_rate == 44100 and item.mixture.shape == (2, 441000)
        np.testing.assert_array_equal(item.mixture, np.sum([item.stems[k] for k in STEMS], axis=0,
                                                           dtype=np.float32))
        assert all(np.sqrt(np.mean(item.stems[k] ** 2)) > 0.01 for k in STEMS)  # every stem has music
    names = [i.name for i in builtin_set()]
    assert names[:4] == [f"golden-0-{i:02d}" for i in range(4)] and names[4:] == [i.name for i in items]
