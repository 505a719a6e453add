"""Demucs' apply_model with the segments of one track batched into one forward pass.

`demucs.apply.apply_model` runs a track's overlapping segments one forward
pass each: on a GPU most of each pass is launch overhead and an idle
device. This is the same computation (same segments, padding, shift trick,
bag weights and overlap-add, built from demucs.apply's own TensorChunk and
center_trim) with up to `batch` segments stacked per pass. Segments are
independent inside the model (per-item normalisation, no cross-batch op),
so the output equals apply_model's to float rounding. On a CPU it does not
pay (4-8 segments per pass measured 1.29x slower), so the predictor uses it
only where MUSICSPLIT_SEGMENT_BATCH resolves above 1.
"""

from __future__ import annotations

import random
from collections import defaultdict

import torch

CUDA_SEGMENT_BATCH = 4  # MUSICSPLIT_SEGMENT_BATCH=0 on a GPU; untuned: no GPU measured it yet


def resolve_segment_batch(requested: int, device: str) -> int:
    """Segments per forward pass: `requested`, or for 0 (auto) >1 on CUDA, 1 on CPU."""
    if requested > 0:
        return requested
    return CUDA_SEGMENT_BATCH if device.startswith("cuda") else 1


def _valid_length(model, length: int, segment: float | None) -> int:
    """The padded length apply_model gives a chunk of `length` samples."""
    from demucs.htdemucs import HTDemucs

    if isinstance(model, HTDemucs) and segment is not None:
        return int(segment * model.samplerate)
    if hasattr(model, "valid_length"):
        return model.valid_length(length)
    return length


def apply_batched(model, mix, *, shifts: int = 1, overlap: float = 0.25, segment: float | None = None,
                  device=None, batch: int = 4) -> torch.Tensor:
    """`apply_model(model, mix, shifts=..., split=True, overlap=..., segment=...)`, `batch` segments a pass."""
    from demucs.apply import BagOfModels, TensorChunk, tensor_chunk

    device = torch.device(device) if device is not None else mix.device
    if isinstance(model, BagOfModels):
        estimates = 0.0
        totals = [0.0] * len(model.sources)
        for sub_model, weights in zip(model.models, model.weights):
            out = apply_batched(sub_model, mix, shifts=shifts, overlap=overlap, segment=segment,
                                device=device, batch=batch)
            for k, weight in enumerate(weights):
                out[:, k, :, :] *= weight
                totals[k] += weight
            estimates += out
        for k in range(estimates.shape[1]):
            estimates[:, k, :, :] /= totals[k]
        return estimates
    model.eval()
    if not shifts:
        return _overlap_add(model, mix, overlap, segment, device, batch)
    # The shift trick as apply_model does it (same random offsets for the same seed).
    length = mix.shape[-1]
    max_shift = int(0.5 * model.samplerate)
    padded = tensor_chunk(mix).padded(length + 2 * max_shift)
    out = 0.0
    for _ in range(shifts):
        offset = random.randint(0, max_shift)
        shifted = TensorChunk(padded, offset, length + max_shift - offset)
        out += _overlap_add(model, shifted, overlap, segment, device, batch)[..., max_shift - offset:]
    return out / shifts


def _overlap_add(model, mix, overlap, segment, device, batch) -> torch.Tensor:
    from demucs.apply import TensorChunk, tensor_chunk
    from demucs.utils import center_trim

    mix = tensor_chunk(mix)
    items, channels, length = mix.shape
    segment_length = int(model.samplerate * (segment if segment is not None else model.segment))
    stride = int((1 - overlap) * segment_length)
    weight = torch.cat([torch.arange(1, segment_length // 2 + 1, device=device),
                        torch.arange(segment_length - segment_length // 2, 0, -1, device=device)])
    weight = weight / weight.max()
    out = torch.zeros(items, len(model.sources), channels, length, device=mix.device)
    sum_weight = torch.zeros(length, device=mix.device)
    # Only chunks padded to the same length stack: all but the last one or two.
    groups: dict[int, list[tuple[int, TensorChunk]]] = defaultdict(list)
    for offset in range(0, length, stride):
        chunk = TensorChunk(mix, offset, segment_length)
        groups[_valid_length(model, chunk.length, segment)].append((offset, chunk))
    for valid, chunks in groups.items():
        for start in range(0, len(chunks), batch):
            part = chunks[start:start + batch]
            with torch.no_grad():
                outputs = model(torch.cat([c.padded(valid) for _, c in part]).to(device))
            for (offset, chunk), chunk_out in zip(part, outputs.split(items)):
                chunk_out = center_trim(chunk_out, chunk.length)
                out[..., offset:offset + segment_length] += (weight[:chunk.length] * chunk_out).to(mix.device)
                sum_weight[offset:offset + segment_length] += weight[:chunk.length].to(mix.device)
    return out / sum_weight
