"""Chunk planning and overlap-add: exact reconstruction, bounded memory, any arrival order."""

from __future__ import annotations

import numpy as np
import pytest

from musicsplit.gateway.jobs.chunking import Assembler, chunk_weights, plan_chunks


@pytest.mark.parametrize("total,chunk,overlap", [(10, 100, 10), (1000, 100, 10), (1001, 100, 30), (44100 * 61, 44100 * 4, 22050)])
def test_plan_covers_track_with_overlapping_even_chunks(total, chunk, overlap):
    chunks = plan_chunks(total, chunk, overlap)
    assert chunks[0].start == 0 and chunks[-1].end == total
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end, "neighbours must overlap (no gap)"
        assert a.end - b.start <= overlap + 1
    lengths = [c.end - c.start for c in chunks]
    assert max(lengths) <= chunk
    if len(chunks) > 1:  # no tiny tail chunk: the predictor refuses audio under 0.1 s
        assert min(lengths) >= (chunk - overlap) // 2


def test_weights_sum_to_one_everywhere():
    chunks = plan_chunks(5000, 700, 120)
    total = np.zeros(5000)
    for i, c in enumerate(chunks):
        total[c.start:c.end] += chunk_weights(chunks, i)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffled"])
def test_overlap_add_reconstructs_the_track_in_any_order(order):
    rng = np.random.default_rng(1)
    track = rng.standard_normal((2, 10_000)).astype(np.float32)
    chunks = plan_chunks(track.shape[1], 1500, 200)
    indices = list(range(len(chunks)))
    if order == "reverse":
        indices.reverse()
    elif order == "shuffled":
        rng.shuffle(indices)
    asm = Assembler(chunks)
    out = {"vocals": np.zeros_like(track), "drums": np.zeros_like(track)}
    written = 0
    for i in indices:
        c = chunks[i]
        # An identity "separator": vocals = the mix, drums = half of it.
        for start, block in asm.add(i, {"vocals": track[:, c.start:c.end], "drums": 0.5 * track[:, c.start:c.end]}):
            assert start == written, "blocks come out in order, without gaps"
            for name, b in block.items():
                out[name][:, start:start + b.shape[1]] = b
            written = start + block["vocals"].shape[1]
    assert written == track.shape[1]
    np.testing.assert_allclose(out["vocals"], track, atol=1e-5)
    np.testing.assert_allclose(out["drums"], 0.5 * track, atol=1e-5)
    assert asm.held == 0


def test_memory_is_bounded_by_the_window_not_the_track():
    chunks = plan_chunks(44100 * 600, 44100 * 10, 44100)  # a 10-minute track
    asm = Assembler(chunks)
    peak = 0
    for i, c in enumerate(chunks):  # in order, as a window of in-flight chunks delivers them
        asm.add(i, {"x": np.zeros((2, c.end - c.start), np.float32)})
        peak = max(peak, asm.held)
    assert len(chunks) > 60 and peak <= 2


def test_wrong_chunk_length_is_refused():
    chunks = plan_chunks(1000, 400, 50)
    with pytest.raises(ValueError, match="expected"):
        Assembler(chunks).add(0, {"x": np.zeros((2, 10), np.float32)})


def test_aligned_chunks_start_on_the_models_grid():
    chunks = plan_chunks(44100 * 14, 44100 * 7, 44100, align=3 * 44100)
    assert [c.start for c in chunks] == [0, 6 * 44100, 12 * 44100]
    assert chunks[-1].end == 44100 * 14
    total = np.zeros(44100 * 14)
    for i, c in enumerate(chunks):
        total[c.start:c.end] += chunk_weights(chunks, i)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_a_48k_track_too_big_for_one_predictor_request_is_chunked_by_its_bytes(tmp_path):
    from musicsplit.gateway.storage.results import InputInfo
    from musicsplit.gateway.jobs.separation import plan
    from musicsplit.gateway.settings import GatewaySettings

    settings = GatewaySettings(data_dir=tmp_path)  # predictor limit 200 MiB, 600 s unchunked, 30 s chunks
    limit = settings.predictor_max_request_bytes
    rate = 48000
    long_48k = InputInfo(frames=550 * rate, sample_rate=rate, channels=2)  # 211 MB of fp32: over 200 MiB
    assert 4 * 2 * long_48k.frames > limit
    planned = plan(settings, long_48k, chunked=False)
    assert len(planned.chunks) > 1 and planned.forced
    assert planned.chunks[-1].end == long_48k.frames
    assert all(4 * 2 * (c.end - c.start) < limit for c in planned.chunks)
    # The same seconds at 44.1 kHz mono fit one request: not chunked with the flag off.
    short = InputInfo(frames=550 * 44100, sample_rate=44100, channels=1)
    assert len(plan(settings, short, chunked=False).chunks) == 1
    # Chunks never outgrow one request, whatever chunk_seconds says.
    small = GatewaySettings(data_dir=tmp_path, predictor_max_request_bytes=1 << 20, chunk_seconds=30.0)
    chunks = plan(small, InputInfo(frames=20 * rate, sample_rate=rate, channels=2), chunked=True).chunks
    assert all(4 * 2 * (c.end - c.start) <= (1 << 20) for c in chunks)
