"""Input validation shared by the predictor and the gateway.

Bad input is refused before any model time is spent, with a message that
says what to fix; what can be fixed silently (mono, another sample rate,
clipping) is fixed and reported as a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pydantic import BaseModel

from musicsplit.audio import Audio, resample
from musicsplit.errors import BadAudio, PayloadTooLarge


class InputLimitSettings(BaseModel):
    """The input limits every component's settings object exposes (predictor, gateway)."""

    max_request_bytes: int = 200 * 1024 * 1024
    max_audio_seconds: float = 20 * 60.0
    min_sample_rate: int = 16_000
    max_channels: int = 2

    def limits(self) -> "Limits":
        return Limits(max_bytes=self.max_request_bytes, max_seconds=self.max_audio_seconds,
                      min_sample_rate=self.min_sample_rate, max_channels=self.max_channels)


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 200 * 1024 * 1024
    max_seconds: float = 20 * 60.0
    min_seconds: float = 0.1
    min_sample_rate: int = 16_000
    max_sample_rate: int = 192_000
    max_channels: int = 2
    clip_level: float = 0.999  # |x| at or above this counts as a clipped sample


WARNING_SEPARATOR = "; "


def join_warnings(warnings: list[str]) -> str:
    """Warnings as one v2 string parameter (gRPC parameters hold scalars only)."""
    return WARNING_SEPARATOR.join(w.replace(";", ",") for w in warnings)


def split_warnings(joined: str | None) -> list[str]:
    return [w.strip() for w in (joined or "").split(WARNING_SEPARATOR.strip()) if w.strip()]


def check_size(num_bytes: int, limits: Limits) -> None:
    if num_bytes > limits.max_bytes:
        raise PayloadTooLarge(
            f"request is {num_bytes} bytes, over the limit of {limits.max_bytes} bytes; "
            "split the track or use the gateway's chunked jobs"
        )


def check_length(frames: int, sample_rate: int, limits: Limits,
                 hint: str = "use the gateway's chunked jobs for long tracks") -> None:
    """Refuse empty, too short and too long audio; `hint` says what to do about length."""
    if frames == 0:
        raise BadAudio("the audio is empty (no samples)")
    seconds = frames / float(sample_rate)
    if seconds > limits.max_seconds:
        raise BadAudio(f"audio is {seconds:.1f} s long, over the limit of {limits.max_seconds:.0f} s; {hint}")
    if seconds < limits.min_seconds:
        raise BadAudio(f"audio is {seconds * 1000:.0f} ms long; send at least {limits.min_seconds} s")


def validate(audio: Audio, limits: Limits) -> list[str]:
    """Raise BadAudio for what cannot be separated; return warnings for the rest."""
    samples = audio.samples
    if samples.ndim != 2:
        raise BadAudio(f"audio must be [channels, samples], got shape {list(samples.shape)}")
    channels, length = samples.shape
    if channels == 0 or length == 0:
        raise BadAudio("the audio is empty (no samples)")
    if channels > limits.max_channels:
        raise BadAudio(
            f"audio has {channels} channels, at most {limits.max_channels} are supported "
            "(downmix to stereo first)"
        )
    if audio.sample_rate < limits.min_sample_rate:
        raise BadAudio(
            f"sample rate {audio.sample_rate} Hz is below the minimum of "
            f"{limits.min_sample_rate} Hz; send audio sampled at 16 kHz or more (44.1 kHz is best)"
        )
    if audio.sample_rate > limits.max_sample_rate:
        raise BadAudio(
            f"sample rate {audio.sample_rate} Hz is above the maximum of {limits.max_sample_rate} Hz"
        )
    check_length(length, audio.sample_rate, limits)
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int(samples.size - np.count_nonzero(finite))
        raise BadAudio(f"audio contains {bad} NaN or infinite samples; send finite PCM values")
    warnings = []
    clipped = int(np.count_nonzero(np.abs(samples) >= limits.clip_level))
    if clipped:
        share = clipped / samples.size
        warnings.append(f"clipping: {clipped} samples ({share:.2%}) at full scale, stems may distort")
    return warnings


def conform(audio: Audio, model_rate: int, model_channels: int) -> tuple[np.ndarray, list[str]]:
    """Convert validated audio to the model's channel count and sample rate; say what changed."""
    warnings = []
    samples = audio.samples.astype(np.float32, copy=False)
    if samples.shape[0] == 1 and model_channels == 2:
        samples = np.repeat(samples, 2, axis=0)
        warnings.append("mono_upmixed: mono input was duplicated to stereo")
    elif samples.shape[0] == 2 and model_channels == 1:
        samples = samples.mean(axis=0, keepdims=True)
        warnings.append("downmixed: stereo input was averaged to mono")
    if audio.sample_rate != model_rate:
        samples = resample(samples, audio.sample_rate, model_rate)
        warnings.append(f"resampled: {audio.sample_rate} Hz input resampled to {model_rate} Hz")
    return samples, warnings
