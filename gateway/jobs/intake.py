"""Upload intake: validate with the shared module, then store as float WAV.

The upload (a staged file: ingress.py wrote it to disk as it arrived) is
read block by block (never the whole file or decoded track in memory),
each block checked by `musicsplit.validation.validate` exactly as
the predictor would, and written to a float32 WAV that chunks can later be
read from at any offset. Bad input is refused here, before any GPU time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from musicsplit.audio import Audio
from musicsplit.errors import BadAudio
from musicsplit import validation
from musicsplit.validation import Limits, check_size, validate

BLOCK_SECONDS = 30.0


@dataclass
class Intake:
    path: Path  # float32 WAV, [frames, channels] on disk
    sha256: str
    sample_rate: int
    channels: int
    frames: int
    warnings: list[str]

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def check_length(frames: int, sample_rate: int, limits: Limits) -> None:
    validation.check_length(frames, sample_rate, limits, hint="split the track and submit the parts")


def take(source: Path, sha256: str, dest: Path, limits: Limits) -> Intake:
    """Validate an uploaded file (its SHA-256 already known) and write it to `dest` as float WAV;
    raise BadAudio/PayloadTooLarge."""
    try:
        return _take(source, sha256, dest, limits)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def take_file(path: Path, dest: Path, limits: Limits) -> Intake:
    """`take` for a file on local disk whose SHA-256 is not known yet (a presigned upload, copied
    from the bucket): hashed block by block, never whole in memory."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1024 * 1024):
            sha.update(block)
    return take(path, sha.hexdigest(), dest, limits)


def _take(source: Path, sha: str, dest: Path, limits: Limits) -> Intake:
    size = source.stat().st_size
    check_size(size, limits)
    if size == 0:
        raise BadAudio("the audio file is empty (0 bytes): send a wav, flac, ogg or mp3 file")
    try:
        src = sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        # libsndfile says "Error opening '<path>': <reason>": keep the reason, never the path.
        reason = str(exc).rsplit(": ", 1)[-1].strip().rstrip(".")
        raise BadAudio(f"could not decode the audio ({size} bytes): {reason}; send a wav, flac, ogg or mp3 "
                       "file") from None
    block_limits = dataclasses.replace(limits, max_seconds=math.inf, min_seconds=0.0)
    warnings: list[str] = []
    clipped = 0
    with src:
        rate, channels = int(src.samplerate), int(src.channels)
        # Header-level checks on a zero-size view, so the messages are the shared ones.
        validate(Audio(np.zeros((channels, 1), np.float32), rate), block_limits)
        if src.frames and src.frames > 0:
            check_length(int(src.frames), rate, limits)
        dest.parent.mkdir(parents=True, exist_ok=True)
        frames = 0
        block = max(1, int(BLOCK_SECONDS * rate))
        with sf.SoundFile(dest, "w", samplerate=rate, channels=channels, format="WAV", subtype="FLOAT") as out:
            while True:
                try:
                    chunk = src.read(block, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as exc:  # corrupt partway through the file
                    raise BadAudio(f"could not decode the audio: {exc}; send a wav, flac, ogg or mp3 file") from None
                if chunk.shape[0] == 0:
                    break
                for w in validate(Audio(np.ascontiguousarray(chunk.T), rate), block_limits):
                    if w.startswith("clipping"):
                        clipped += int(w.split(":", 1)[1].split()[0])
                    elif w not in warnings:
                        warnings.append(w)
                out.write(chunk)
                frames += chunk.shape[0]
                if frames / rate > limits.max_seconds:
                    break
    check_length(frames, rate, limits)
    if clipped:
        total = frames * channels
        warnings.insert(0, f"clipping: {clipped} samples ({clipped / total:.2%}) at full scale; stems may distort")
    return Intake(dest, sha, rate, channels, frames, warnings)

