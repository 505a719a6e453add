"""Cutting a long track into overlapping chunks and putting the stems back.

Chunks are spread evenly (every chunk about the same length, none tiny),
neighbours overlap by `overlap` samples, and the overlap is cross-faded with
complementary linear ramps (weights normalised, so they sum to one
everywhere). The assembler takes chunk results in any order and releases
finished audio front to back, so a job holds only the chunks that still
overlap unfinished audio: memory is bounded by the window, not the track.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


# A chunk goes to the predictor as one v2 request: fp32 samples (4 bytes each) after a JSON
# header of a few hundred bytes; this leaves the header ample room.
REQUEST_HEADROOM_BYTES = 64 * 1024


def max_request_frames(max_request_bytes: int, channels: int) -> int:
    """The most frames of `channels`-channel audio one request may carry under the predictor's byte limit."""
    return max(1, (max_request_bytes - REQUEST_HEADROOM_BYTES) // (4 * max(1, channels)))


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # first sample
    end: int  # one past the last sample


def plan_chunks(total: int, chunk: int, overlap: int, align: int = 1) -> list[Chunk]:
    """Chunks of at most `chunk` samples covering [0, total), neighbours overlapping.

    `align` > 1 starts every chunk on a multiple of `align` samples: a model
    that frames its input on a fixed grid (an STFT hop, Demucs' segment
    stride) then sees the same frames in a chunk as in the whole track, and
    only the cross-faded edges differ.
    """
    if total <= 0:
        return []
    if chunk <= 0:
        raise ValueError("chunk length must be positive")
    overlap = max(0, min(overlap, chunk // 2))
    if total <= chunk:
        return [Chunk(0, 0, total)]
    if align > 1:
        step = max(align, (chunk - overlap) // align * align)
        if step >= chunk:
            raise ValueError(f"chunks of {chunk} samples cannot overlap on a grid of {align} samples")
        chunks, start = [], 0
        while True:
            end = min(total, start + chunk)
            chunks.append(Chunk(len(chunks), start, end))
            if end == total:
                return chunks
            start += step
    count = math.ceil((total - overlap) / (chunk - overlap))
    step = (total - overlap) / count
    length = min(chunk, math.ceil(step) + overlap)
    chunks = []
    for i in range(count):
        start = int(round(i * step))
        end = total if i == count - 1 else min(total, start + length)
        chunks.append(Chunk(i, start, end))
    return chunks


def chunk_weights(chunks: list[Chunk], i: int) -> np.ndarray:
    """Cross-fade weights of chunk i: ramps over the overlaps with its neighbours."""
    c = chunks[i]
    w = np.ones(c.end - c.start, dtype=np.float32)
    if i > 0:
        n = max(0, chunks[i - 1].end - c.start)
        if n:
            w[:n] = (np.arange(n, dtype=np.float32) + 0.5) / n
    if i + 1 < len(chunks):
        n = max(0, c.end - chunks[i + 1].start)
        if n:
            w[-n:] = np.minimum(w[-n:], (np.arange(n, 0, -1, dtype=np.float32) - 0.5) / n)
    return w


class Assembler:
    """Overlap-add of chunk results, released in order as soon as they are final."""

    def __init__(self, chunks: list[Chunk]):
        self.chunks = chunks
        self.done: dict[int, dict[str, np.ndarray]] = {}
        self.flushed = 0  # samples [0, flushed) have been released
        self.next_complete = 0  # chunks [0, next_complete) have all arrived
        self.released = 0  # chunks [0, released) are written out and dropped from memory

    @property
    def held(self) -> int:
        """Chunk results held in memory right now."""
        return len(self.done)

    def add(self, index: int, stems: dict[str, np.ndarray]) -> list[tuple[int, dict[str, np.ndarray]]]:
        """Take chunk `index`'s stems ([C, T] each); return finished (start, stems) blocks."""
        c = self.chunks[index]
        for name, s in stems.items():
            if s.shape[-1] != c.end - c.start:
                raise ValueError(
                    f"chunk {index} stem {name} has {s.shape[-1]} samples, expected {c.end - c.start}"
                )
        self.done[index] = stems
        while self.next_complete in self.done:
            self.next_complete += 1
        if self.next_complete == 0:
            return []
        # Audio before the next missing chunk's start is final (chunks overlap only neighbours).
        limit = self.chunks[self.next_complete].start if self.next_complete < len(self.chunks) else self.chunks[-1].end
        if limit <= self.flushed:
            return []
        block = self._mix(self.flushed, limit)
        released = [(self.flushed, block)]
        self.flushed = limit
        for j in sorted(j for j in self.done if self.chunks[j].end <= self.flushed):
            del self.done[j]
            self.released = j + 1
        return released

    def _mix(self, a: int, b: int) -> dict[str, np.ndarray]:
        acc: dict[str, np.ndarray] = {}
        norm = np.zeros(b - a, dtype=np.float32)
        for j, stems in self.done.items():
            c = self.chunks[j]
            lo, hi = max(a, c.start), min(b, c.end)
            if lo >= hi:
                continue
            w = chunk_weights(self.chunks, j)[lo - c.start:hi - c.start]
            norm[lo - a:hi - a] += w
            for name, s in stems.items():
                if name not in acc:
                    acc[name] = np.zeros((s.shape[0], b - a), dtype=np.float32)
                acc[name][:, lo - a:hi - a] += s[:, lo - c.start:hi - c.start] * w
        norm = np.maximum(norm, 1e-8)
        return {name: v / norm for name, v in acc.items()}
