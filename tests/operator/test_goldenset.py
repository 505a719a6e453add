"""User golden sets as the operator reads them: the MUSDB layout from a
ConfigMap's keys or a fetched folder, every problem refused before any audio
is sent, with a message naming the track and what is wrong."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf

from musicsplit.golden import golden_set
from musicsplit.operator import goldenset
from musicsplit.operator.goldenset import GoldenSetError, configmap_tracks, directory_tracks
from musicsplit.operator.spec import GoldenSetSpec

SR = 22050


def wav(samples: np.ndarray, sr: int = SR, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples, dtype=np.float32).T, sr, format=fmt, subtype="PCM_16" if fmt == "WAV" else None)
    return buf.getvalue()


def track_files(seed: int = 1, seconds: float = 0.5, sr: int = SR) -> dict[str, bytes]:
    item = golden_set(n=1, seconds=seconds, sample_rate=sr, seed=seed)[0]
    return {"mixture": wav(item.mixture, sr), **{stem: wav(x, sr) for stem, x in item.stems.items()}}


def binary(tracks: dict[str, dict[str, bytes]]) -> dict[str, str]:
    """A ConfigMap's binaryData as the API returns it."""
    return {f"{t}.{part}.wav": base64.b64encode(blob).decode() for t, parts in tracks.items()
            for part, blob in parts.items()}


def test_a_configmap_set_is_read_track_by_track():
    tracks = configmap_tracks("refs", binary({"song.v2": track_files(1), "other-song": track_files(2)}), None)
    assert [(t.source, t.name) for t in tracks] == [("configMap/refs", "other-song"), ("configMap/refs", "song.v2")]
    assert all(t.seconds == pytest.approx(0.5) for t in tracks)
    item = tracks[1].load()  # decoded only now
    assert item.name == "configMap/refs/song.v2" and item.sample_rate == SR
    assert set(item.stems) == {"drums", "bass", "other", "vocals"}
    # 16-bit PCM: the mixture is still (nearly) the sum of its stems.
    assert np.max(np.abs(item.mixture - sum(item.stems.values()))) < 1e-3


def test_a_mono_track_is_scored_as_the_predictor_serves_it():
    mono = {"mixture": wav(np.full((1, SR), 0.1)), "vocals": wav(np.full((1, SR), 0.1))}
    item = configmap_tracks("m", binary({"t": mono}), None)[0].load()
    assert item.mixture.shape == (2, SR) and item.stems["vocals"].shape == (2, SR)


def _with(files: dict[str, bytes], **change) -> dict[str, bytes]:
    out = dict(files)
    for k, v in change.items():
        if v is None:
            out.pop(k)
        else:
            out[k] = v
    return out


GOOD = track_files(3)


@pytest.mark.parametrize("parts, words", [
    (_with(GOOD, mixture=None), "track song: no mixture"),
    (_with(GOOD, drums=None, bass=None, other=None, vocals=None), "track song: a mixture without stems"),
    (_with(GOOD, kazoo=GOOD["drums"]), "track song: unknown stem kazoo"),
    (_with(GOOD, vocals=b"RIFF not really a wave file"), "track song: vocals file is not a readable wav or flac"),
    (_with(GOOD, bass=wav(np.zeros((2, SR // 2)), 44100)), "track song: bass is at 44100 Hz, the mixture at 22050 Hz"),
    (_with(GOOD, other=wav(np.zeros((2, SR // 4)))), "track song: other has 5512 samples, the mixture 11025"),
    (_with(GOOD, drums=wav(np.zeros((1, SR // 2)))), "track song: drums has 1 channels, the mixture 2"),
    ({p: wav(np.zeros((2, 4000)), 8000) for p in ("mixture", "vocals")}, "8000 Hz is below the predictor's 16000"),
])
def test_a_broken_track_is_refused_naming_it_and_the_problem(parts, words):
    with pytest.raises(GoldenSetError) as e:
        configmap_tracks("refs", binary({"song": parts}), None)
    assert words in str(e.value) and e.value.reason == goldenset.INVALID


def test_configmap_keys_must_say_track_and_part():
    with pytest.raises(GoldenSetError, match="key notes.txt is not TRACK.mixture.wav"):
        configmap_tracks("refs", binary({"song": GOOD}), {"notes.txt": "hello"})
    with pytest.raises(GoldenSetError, match="ConfigMap empty holds no track"):
        configmap_tracks("empty", {}, {})


def test_a_storage_folder_is_one_folder_per_track(tmp_path):
    for track, seed in (("test/Artist - Song", 1), ("train/Other - Tune", 2)):
        d = tmp_path / track
        d.mkdir(parents=True)
        for part, blob in track_files(seed).items():
            (d / f"{part}.wav").write_bytes(blob)
    (tmp_path / "README.md").write_text("MUSDB-style")
    tracks = directory_tracks("s3://golden/set", tmp_path)
    assert [t.name for t in tracks] == ["test/Artist - Song", "train/Other - Tune"]
    assert tracks[0].load().name == "s3://golden/set/test/Artist - Song"
    (tmp_path / "stray.wav").write_bytes(GOOD["vocals"])
    with pytest.raises(GoldenSetError, match="stray.wav is at the top; put each track in its own folder"):
        directory_tracks("s3://golden/set", tmp_path)


def test_flac_is_read_as_well(tmp_path):
    item = golden_set(n=1, seconds=0.5, sample_rate=SR, seed=4)[0]
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "mixture.flac").write_bytes(wav(item.mixture, fmt="FLAC"))
    (tmp_path / "t" / "vocals.flac").write_bytes(wav(item.stems["vocals"], fmt="FLAC"))
    assert set(directory_tracks("file:///x", tmp_path)[0].load().stems) == {"vocals"}


def test_sets_are_pooled_and_their_digest_follows_their_content():
    stored = {"refs": binary({"song": GOOD})}
    read = lambda ns, name: (stored[name], None)  # noqa: E731
    both = goldenset.load(GoldenSetSpec(builtin=True, config_map="refs"), "ml", read_configmap=read)
    assert both.ref == "builtin+configMap:refs"
    assert [t.source for t in both.tracks] == ["builtin"] * 4 + ["builtin-real"] * 2 + ["configMap/refs"]
    mine = goldenset.load(GoldenSetSpec(config_map="refs"), "ml", read_configmap=read)
    assert mine.ref == "configMap:refs" and len(mine.tracks) == 1  # named alone: instead of the built-in set
    assert goldenset.load(GoldenSetSpec(config_map="refs"), "ml", read_configmap=read).digest == mine.digest
    stored["refs"] = binary({"song": track_files(9)})
    assert goldenset.load(GoldenSetSpec(config_map="refs"), "ml", read_configmap=read).digest != mine.digest
    with pytest.raises(GoldenSetError, match="holds 44 s of audio, over the operator's limit of 10 s"):
        goldenset.load(GoldenSetSpec(), "ml", max_seconds=10)


def test_the_builtin_set_holds_real_music_apart_from_the_synthetic_items():
    """Two 10 s excerpts of a CC0 song with their true stems, reported as their
    own set; `realMusic: false` leaves them out, and results of the two sets
    never compare (another ref, another digest)."""
    full = goldenset.builtin()
    real = [t for t in full.tracks if t.source == "builtin-real"]
    assert [t.name for t in real] == ["real-lithium-112s", "real-lithium-196s"]
    assert all(abs(t.seconds - 10.0) < 0.1 for t in real)
    item = real[0].load()
    assert set(item.stems) == {"drums", "bass", "other", "vocals"} and item.sample_rate == 44100
    assert abs(item.mixture - sum(item.stems.values())).max() < 1e-5  # the mixture is its stems' sum
    synthetic = goldenset.load(GoldenSetSpec(real_music=False), "ml")
    assert [t.source for t in synthetic.tracks] == ["builtin"] * 4
    assert (synthetic.ref, full.ref) == ("builtin-synthetic", "builtin") and synthetic.digest != full.digest
