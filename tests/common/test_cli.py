"""The commands a user types: `musicsplit separate` and the README's main job."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import soundfile as sf
import pytest

from musicsplit.audio import encode
from musicsplit.golden import golden_set


def musicsplit(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "musicsplit.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_separate_writes_one_file_per_stem_and_reports_version_and_quality(predictor_url, tmp_path):
    item = golden_set(n=1, seconds=2.0, seed=5)[0]
    track = tmp_path / "song.flac"
    track.write_bytes(encode(item.mixture, 44100, "flac"))
    done = musicsplit("separate", str(track), "--url", predictor_url, "--model", "tiny",
                      "--out", str(tmp_path / "stems"), "--stems", "vocals,no_vocals")
    assert done.returncode == 0, done.stderr
    assert "version 1.0.0" in done.stdout and "quality" in done.stdout
    for stem in ("vocals", "no_vocals"):
        samples, rate = sf.read(tmp_path / "stems" / f"song.{stem}.wav")
        assert rate == 44100 and samples.shape == (item.mixture.shape[1], 2)


def test_separate_explains_a_refusal(predictor_url, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not audio")
    done = musicsplit("separate", str(bad), "--url", predictor_url, "--model", "tiny", "--out", str(tmp_path))
    assert done.returncode == 1
    assert "400" in done.stderr and "could not decode the audio" in done.stderr
    missing = musicsplit("separate", str(tmp_path / "nope.wav"), "--url", predictor_url, "--model", "tiny")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.mark.slow
def test_demo_separates_a_track_end_to_end_and_scores_it(tmp_path):
    """README command (1), minus the install step."""
    done = musicsplit("demo", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    for stem in ("drums", "bass", "other", "vocals"):
        path = tmp_path / "stems" / f"track.{stem}.wav"
        assert path.is_file() and str(path) in done.stdout
        samples, _ = sf.read(path)
        assert np.abs(samples).max() > 0
    sdrs = [float(line.split("SDR")[1].split("dB")[0]) for line in done.stdout.splitlines() if "SDR " in line and "vs the true" in line]
    assert len(sdrs) == 4 and max(sdrs) > 0  # real music: the baseline gets some stems right, not all
    assert "real music (CC0 excerpt lithium-112s)" in done.stdout
    assert "quality estimate" in done.stdout and "true SDR (mean over stems" in done.stdout
    assert "dsp-baseline version builtin-1" in done.stdout
    assert "gateway ready" in done.stdout and "uploaded track.wav: job" in done.stdout  # the whole stack
