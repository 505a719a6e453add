"""Batched segments (MUSICSPLIT_SEGMENT_BATCH) compute what Demucs' apply_model computes."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from musicsplit.predictor.loading import DemucsSeparator, load
from musicsplit.predictor.segments import CUDA_SEGMENT_BATCH, apply_batched, resolve_segment_batch
from tests.fixtures.checkpoints import make_model_dir


def test_auto_batches_on_cuda_only():
    assert resolve_segment_batch(0, "cpu") == 1
    assert resolve_segment_batch(0, "cuda:1") == CUDA_SEGMENT_BATCH > 1
    assert resolve_segment_batch(3, "cpu") == 3


def _mix(seconds: float, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy((np.random.default_rng(seed).standard_normal((1, 2, int(seconds * 44100))) * 0.1)
                            .astype(np.float32))


@pytest.fixture(scope="module")
def single_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("models") / "one", "one")


@pytest.fixture(scope="module")
def hdemucs_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("models") / "hd", "hd", kind="hdemucs")


@pytest.mark.parametrize("kind,seconds,shifts,segment", [
    ("htdemucs", 7.3, 0, None),  # 3 segments of 4 s, the last one short: a batch of 2, then 1
    # The shift trick with the same random offset. (Only for one model and one shift: each
    # HTDemucs forward draws from `random` too, so with fewer passes the next offsets differ.)
    ("htdemucs", 4.5, 1, None),
    ("htdemucs", 4.0, 0, 2.5),  # a requested segment shorter than the model's
    ("hdemucs", 9.0, 0, 4.0),  # HDemucs pads the short last chunk to another length: its own pass
])
@pytest.mark.slow
def test_batched_segments_equal_demucs_apply_model(kind, seconds, shifts, segment, single_dir, hdemucs_dir):
    from demucs.apply import apply_model

    model = load(str(single_dir if kind == "htdemucs" else hdemucs_dir), "cpu", "fp32").separator.model
    mix = _mix(seconds)
    with torch.inference_mode():
        random.seed(7)
        expected = apply_model(model, mix, shifts=shifts, split=True, overlap=0.25, segment=segment)
        random.seed(7)
        batched = apply_batched(model, mix, shifts=shifts, overlap=0.25, segment=segment, batch=2)
    assert batched.shape == expected.shape
    torch.testing.assert_close(batched, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_a_separator_with_segment_batch_serves_the_same_stems(tiny_model_dir):
    """The bag of two, weights and all, through the predictor's separator."""
    unbatched = load(str(tiny_model_dir), "cpu", "fp32").separator
    assert unbatched.segment_batch == 1  # auto on CPU
    batched = DemucsSeparator(unbatched.model, "cpu", "fp32", segment_batch=4)
    mix = _mix(4.5, seed=1)[0].numpy()
    np.testing.assert_allclose(batched.separate(mix, shifts=0), unbatched.separate(mix, shifts=0), atol=1e-5)
