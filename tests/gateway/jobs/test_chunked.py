"""Chunked separation of long tracks: the result matches separating the whole track
in one request, several replicas share the chunks, and memory stays bounded."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import soundfile as sf
import pytest

from musicsplit.v2client import V2Client

from tests.gateway.conftest import submit, tone, wait_job, wav_bytes


def _stems(url: str, doc: dict) -> dict[str, np.ndarray]:
    out = {}
    for name, path in doc["stems"].items():
        audio, _ = sf.read(io.BytesIO(httpx.get(url + path).content), dtype="float32", always_2d=True)
        out[name] = audio.T
    return out


def _snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    noise = np.sum((reference - estimate) ** 2)
    return float(10 * np.log10(np.sum(reference ** 2) / max(noise, 1e-20)))


# Tolerance, stated as the SNR of each chunked stem against the whole-track stem.
# Tiny Demucs with random weights: >= 18 dB (measured 20.4-24.8 dB). Chunks start
# on its segment stride, but each chunk is normalised by its own std and the
# segments at a chunk's edges are padded, and random weights amplify both; a
# trained model is far less sensitive. STFT baseline on its hop grid: >= 35 dB
# (measured 41.8-62.9 dB): only the frames at chunk edges differ.
DEMUCS_TOLERANCE_DB = 18.0
BASELINE_TOLERANCE_DB = 35.0


@pytest.mark.slow
def test_chunked_demucs_matches_whole_track(predictor_url, gateway_factory):
    mix = tone(14.0, seed=21)
    with V2Client(predictor_url) as client:  # shifts=0: Demucs' random shift would differ run to run
        whole = client.separate("tiny", mix, 44100, shifts=0).stems
    # Chunks start on Demucs' segment stride (4 s segments, 25 % overlap -> 3 s) so its segments line up.
    gw = gateway_factory([("tiny", predictor_url, "local")], chunk_seconds=7.0, chunk_overlap_seconds=1.0,
                         chunk_align_samples=3 * 44100)
    doc = wait_job(gw.url, submit(gw.url, wav_bytes(mix), model="tiny", shifts=0).json()["id"], timeout=120)
    assert doc["status"] == "succeeded", doc
    assert doc["progress"]["chunks_total"] == 3
    chunked = _stems(gw.url, doc)
    snrs = {name: _snr_db(whole[name], chunked[name]) for name in whole}
    print("chunked vs whole SNR dB (tiny demucs):", {k: round(v, 1) for k, v in snrs.items()})
    assert min(snrs.values()) > DEMUCS_TOLERANCE_DB, snrs


@pytest.mark.slow
def test_long_track_uses_several_replicas_with_bounded_memory(baseline_url, gateway_factory, tmp_path):
    from musicsplit.localstack import start_predictor

    second = start_predictor("builtin://dsp-baseline", "dsp-baseline", log_dir=tmp_path)
    try:
        mix = tone(90.0, channels=2, seed=22)
        with V2Client(baseline_url) as client:
            whole = client.separate("dsp-baseline", mix, 44100).stems
        gw = gateway_factory([("dsp-baseline", baseline_url, "zone-a"), ("dsp-baseline", second.url, "zone-b")],
                             chunk_seconds=5.0, chunk_overlap_seconds=0.5, chunk_concurrency=4, chunk_window=4,
                             chunk_align_samples=2048)  # the baseline's STFT hop
        start = time.perf_counter()
        doc = wait_job(gw.url, submit(gw.url, wav_bytes(mix, subtype="PCM_24")).json()["id"], timeout=120)
        elapsed = time.perf_counter() - start
        assert doc["status"] == "succeeded", doc
        assert doc["progress"]["chunks_total"] == 21
        job = gw.job(doc["id"])
        assert job.result["peak_chunks_held"] <= 4, "memory bounded by the window (4 chunks), not 21"
        # Both replicas took chunks (equal preference: the one with fewer in flight gets the next).
        assert set(job.result["regions"]) == {"zone-a", "zone-b"}
        chunked = _stems(gw.url, doc)
        snrs = {name: _snr_db(whole[name], chunked[name]) for name in whole}
        print(f"90 s track, 21 chunks on 2 replicas in {elapsed:.2f} s; SNR dB vs whole:",
              {k: round(v, 1) for k, v in snrs.items()})
        assert min(snrs.values()) > BASELINE_TOLERANCE_DB, snrs
    finally:
        second.stop()


@pytest.mark.slow
def test_job_memory_is_bounded_by_the_window_not_the_track(baseline_url, gateway_factory):
    """Python-side allocations (numpy included) while a long job runs stay under a bound set by
    the chunk size and window alone, far below the decoded track's stems."""
    import tracemalloc

    chunk_s, window, concurrency = 3.0, 3, 2
    gw = gateway_factory([("dsp-baseline", baseline_url, "local")], chunk_seconds=chunk_s, chunk_overlap_seconds=0.5,
                         chunk_concurrency=concurrency, chunk_window=window, chunk_align_samples=2048)
    seconds = 150.0
    data = wav_bytes(tone(seconds, seed=23), subtype="PCM_16")
    tracemalloc.start()
    try:
        job = submit(gw.url, data).json()
        del data
        tracemalloc.reset_peak()
        doc = wait_job(gw.url, job["id"], timeout=120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert doc["status"] == "succeeded" and doc["progress"]["chunks_total"] >= 55
    chunk_result = int(chunk_s * 44100) * 2 * 4 * 4  # one chunk's 4 float32 stereo stems
    # Held results, responses being read (httpx joins the body: 2x), the block being mixed and
    # written, with room for timing: a constant of the configuration, whatever the length.
    bound = (3 * window + 2 * concurrency + 4) * chunk_result
    stems = int(seconds * 44100) * 2 * 4 * 4
    print(f"peak traced memory during a {seconds:.0f} s job: {peak / 2**20:.1f} MiB; bound from the window "
          f"{bound / 2**20:.0f} MiB; the track's stems {stems / 2**20:.0f} MiB")
    assert peak < bound < stems / 2


def _versions_by_call(gw, version_of_call):
    """Make the predictor's answers report the model version `version_of_call(n)` (n = 1, 2, ...)."""
    original, calls = gw.service.router.separate, []

    async def separate(*args, **kwargs):
        routed = await original(*args, **kwargs)
        calls.append(1)
        routed.value.parameters["model_version"] = version_of_call(len(calls))
        routed.endpoint.version = routed.value.parameters["model_version"]
        return routed

    gw.service.router.separate = separate
    return calls


def test_a_chunk_from_another_model_version_is_separated_again_by_the_jobs_version(baseline_url, gateway_factory):
    # A rollout under way behind one URL: answers alternate between "1.9" and "1.10".
    gw = gateway_factory([("dsp-baseline", baseline_url, "eu")], chunk_seconds=3.0, chunk_overlap_seconds=0.5,
                         chunk_concurrency=1)
    calls = _versions_by_call(gw, lambda n: "1.9" if n % 2 else "1.10")
    data = wav_bytes(tone(9.0, seed=71))
    doc = wait_job(gw.url, submit(gw.url, data, user="rollout").json()["id"])
    assert doc["status"] == "succeeded", doc
    chunks = doc["progress"]["chunks_total"]
    assert chunks > 1 and len(calls) == 2 * chunks - 1, "every 1.10 answer was sent again"
    job = gw.job(doc["id"])
    assert job.model_version == "1.9" and job.result["served_by"] == ["dsp-baseline"]
    assert not any("version" in w for w in job.result["warnings"]), job.result["warnings"]
    again = wait_job(gw.url, submit(gw.url, data, user="rollout").json()["id"])
    assert again["status"] == "succeeded" and again["cached"] is True and again["model_version"] == "1.9"


def test_a_job_whose_version_is_gone_fails_clearly_instead_of_mixing(baseline_url, gateway_factory):
    gw = gateway_factory([("dsp-baseline", baseline_url, "eu")], chunk_seconds=3.0, chunk_overlap_seconds=0.5,
                         chunk_concurrency=1, chunk_version_retries=2)
    _versions_by_call(gw, lambda n: "1.9" if n == 1 else "1.10")  # the rollout completes after chunk 0
    doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(9.0, seed=74))).json()["id"])
    assert doc["status"] == "failed", doc
    assert doc["error"]["code"] == "model_changed" and "submit it again" in doc["error"]["error"], doc["error"]
    assert doc["stems"] == {} and not (gw.service.results.job_dir(doc["id"]) / "stems").exists()


@pytest.mark.slow
def test_the_fallback_model_never_finishes_a_job_the_chosen_model_started(baseline_url, gateway_factory, tmp_path):
    from musicsplit.localstack import start_predictor

    primary = start_predictor("builtin://dsp-baseline", "primary", log_dir=tmp_path)
    try:
        gw = gateway_factory([("primary", primary.url, "eu"), ("dsp-baseline", baseline_url, "eu")],
                             default_model="primary", fallback_model="dsp-baseline", chunk_seconds=2.0,
                             chunk_overlap_seconds=0.25, chunk_concurrency=1, chunk_retries=0, retry_attempts=2)
        job = submit(gw.url, wav_bytes(tone(40.0, channels=1, seed=75), subtype="PCM_16")).json()
        deadline = time.monotonic() + 30
        while httpx.get(f"{gw.url}/v1/separations/{job['id']}").json()["progress"]["chunks_done"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        primary.kill()  # the chosen model goes away mid-job; the fallback is up
        doc = wait_job(gw.url, job["id"], timeout=60)
        assert doc["status"] == "failed", doc
        assert doc["error"]["code"] == "upstream_unavailable", doc["error"]
        assert "never finished by another model" in doc["error"]["error"]
        # From the start, the fallback takes the whole job (one model end to end).
        whole = wait_job(gw.url, submit(gw.url, wav_bytes(tone(5.0, seed=76))).json()["id"], timeout=60)
        assert whole["status"] == "succeeded", whole
        assert gw.job(whole["id"]).result["served_by"] == ["dsp-baseline"]
        assert any(w.startswith("fallback") for w in whole["warnings"])
    finally:
        primary.stop()


def test_a_stem_first_appearing_in_a_later_chunk_fails_the_job_not_misplaced(baseline_url, gateway_factory):
    gw = gateway_factory([("dsp-baseline", baseline_url, "eu")], chunk_seconds=3.0, chunk_overlap_seconds=0.5,
                         chunk_concurrency=1)
    original, calls = gw.service.router.separate, []

    async def separate(*args, **kwargs):
        routed = await original(*args, **kwargs)
        calls.append(1)
        if len(calls) > 1:  # a later chunk brings a stem the first one did not have
            routed.value.stems["guitar"] = routed.value.stems["other"]
        return routed

    gw.service.router.separate = separate
    doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(9.0, seed=77))).json()["id"])
    assert doc["status"] == "failed" and doc["error"]["code"] == "internal_error", doc
    assert doc["stems"] == {}


def test_48k_upload_of_an_odd_length_keeps_its_length_in_every_stem(baseline_url, gateway_factory):
    rate, frames = 48000, 48000 * 9 + 7  # not a multiple of the 160-sample 48k/44.1k resampling period
    mix = tone(10.0, rate=rate, seed=72)[:, :frames]
    gw = gateway_factory([("dsp-baseline", baseline_url, "eu")], chunk_seconds=4.0, chunk_overlap_seconds=0.5)
    doc = wait_job(gw.url, submit(gw.url, wav_bytes(mix, rate=rate)).json()["id"], timeout=90)
    assert doc["status"] == "succeeded", doc
    assert doc["progress"]["chunks_total"] > 1
    for name, path in doc["stems"].items():
        audio, sr = sf.read(io.BytesIO(httpx.get(gw.url + path).content), dtype="float32", always_2d=True)
        assert sr == rate and audio.shape == (frames, 2), (name, sr, audio.shape)


def test_predictor_warnings_reach_the_job_whole_and_once(baseline_url, gateway_factory):
    gw = gateway_factory([("dsp-baseline", baseline_url, "eu")], chunk_seconds=3.0, chunk_overlap_seconds=0.5)
    original = gw.service.router.separate
    joined = "resampled: 48000 Hz to 44100 Hz, and back;  low_level: -45 dBFS; clipping: 3 samples"

    async def separate(*args, **kwargs):
        routed = await original(*args, **kwargs)
        routed.value.parameters["warnings"] = joined  # as the predictor joins them: "; "
        return routed

    gw.service.router.separate = separate
    doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(7.0, seed=73))).json()["id"])
    assert doc["status"] == "succeeded" and doc["progress"]["chunks_total"] > 1, doc
    assert doc["warnings"] == ["resampled: 48000 Hz to 44100 Hz, and back", "low_level: -45 dBFS"], doc["warnings"]
