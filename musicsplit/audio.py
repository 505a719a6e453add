"""Audio decoding, encoding and resampling (soundfile + julius, no torchaudio).

Samples are float32 numpy arrays shaped [channels, samples] everywhere in
musicsplit; soundfile's [samples, channels] layout stays inside this module.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from musicsplit.errors import BadAudio, BadRequest

# Output encodings a client may ask for. wav keeps the model's float output
# bit-exact; flac has no float mode, so it is 24-bit PCM.
ENCODINGS = {"wav": ("WAV", "FLOAT"), "flac": ("FLAC", "PCM_24")}


@dataclass
class Audio:
    samples: np.ndarray  # float32 [channels, samples]
    sample_rate: int

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def seconds(self) -> float:
        return self.samples.shape[-1] / float(self.sample_rate) if self.sample_rate else 0.0


def decode(data: bytes) -> Audio:
    """Decode an encoded file (wav, flac, ogg, mp3: whatever libsndfile reads)."""
    if not data:
        raise BadAudio("the audio file is empty (0 bytes): send a wav, flac, ogg or mp3 file")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            frames = f.read(dtype="float32", always_2d=True)
            sample_rate = int(f.samplerate)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        # libsndfile says "Error opening <_io.BytesIO ...>: <reason>": keep the reason.
        reason = str(exc).rsplit(": ", 1)[-1].strip().rstrip(".")
        raise BadAudio(
            f"could not decode the audio ({len(data)} bytes): {reason}; "
            "send a wav, flac, ogg or mp3 file"
        ) from None
    return Audio(np.ascontiguousarray(frames.T), sample_rate)


def probe(data: bytes) -> tuple[int, int]:
    """(frames, sample rate) from the file's header, without decoding; (0, 0) if unknown."""
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return 0, 0  # decode() gives the precise error
    return max(int(info.frames), 0), int(info.samplerate)


def encode(samples: np.ndarray, sample_rate: int, fmt: str = "wav") -> bytes:
    """Encode [channels, samples] float audio as wav (float32) or flac (24-bit)."""
    try:
        container, subtype = ENCODINGS[fmt]
    except KeyError:
        raise BadRequest(
            f"unknown output format {fmt!r}: use one of {sorted(ENCODINGS)} or fp32"
        ) from None
    data = np.asarray(samples, dtype=np.float32).T
    if subtype.startswith("PCM"):
        data = np.clip(data, -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, data, sample_rate, format=container, subtype=subtype)
    return buf.getvalue()


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Trim or zero-pad the last axis to `length` (resampling there and back can be a sample off)."""
    if samples.shape[-1] >= length:
        return samples[..., :length]
    return np.pad(samples, [(0, 0)] * (samples.ndim - 1) + [(0, length - samples.shape[-1])])


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited sinc resampling (julius), [channels, samples] in and out."""
    if src_rate == dst_rate:
        return samples
    import julius
    import torch

    out = julius.resample_frac(torch.from_numpy(np.ascontiguousarray(samples)), src_rate, dst_rate)
    return out.numpy().astype(np.float32, copy=False)
