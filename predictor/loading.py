"""Finding and loading a model: a model dir (modeldir.py: both Demucs layouts and the
`musicsplit.yaml` manifest), a storage URI (fetched as KServe's storage initializer
would: `hf://owner/repo` leaves a dir in demucs' Hugging Face layout), a pretrained
name, or the builtin DSP baseline. Everything here runs before the server says
ready; any failure is a ModelLoadError with a message an operator can act on.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from musicsplit.errors import BadRequest
from musicsplit.predictor.modeldir import (  # noqa: F401 (ModelLoadError, MANIFEST: this module's API too)
    MANIFEST, Manifest, ModelLoadError, derived_version, load_demucs_dir, verify_files,
)

log = logging.getLogger(__name__)

BUILTIN_BASELINE = "builtin://dsp-baseline"
# Names Demucs resolves itself (Hugging Face hub first, then the official URLs).
PRETRAINED = {
    "htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi",
    "mdx", "mdx_extra", "mdx_q", "mdx_extra_q",
}


class Separator(Protocol):
    """What the predictor serves: a Demucs model wrapper or the DSP baseline."""

    sources: list[str]
    samplerate: int
    audio_channels: int

    def separate(
        self,
        samples: np.ndarray,
        *,
        shifts: int = 1,
        overlap: float = 0.25,
        segment: float | None = None,
    ) -> np.ndarray: ...


@dataclass
class LoadedModel:
    separator: Separator
    name: str
    version: str
    architecture: str
    device: str
    manifest: Manifest
    load_seconds: float = 0.0
    precision: str = "fp32"  # what the model runs at (precision.resolve); the DSP baseline: fp32


def _pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} requested but CUDA is not available on this node")
    return requested


class DemucsSeparator:
    """A Demucs model or bag, applied the way the demucs CLI applies it, at `precision`,
    `segment_batch` segments of a track per forward pass (1: Demucs' own apply_model)."""

    def __init__(self, model, device: str, precision: str = "fp32", segment_batch: int = 1):
        self.model = model.to(device).eval()
        self.device = device
        self.precision = precision
        self.segment_batch = segment_batch
        self.sources = list(model.sources)
        self.samplerate = int(model.samplerate)
        self.audio_channels = int(model.audio_channels)
        self.max_segment = float(getattr(model, "max_allowed_segment", math.inf))
        # A bag's own segment is often unset: its models' segment is what apply_model uses.
        first = getattr(model, "models", [model])[0]
        self.segment = float(getattr(model, "segment", None) or getattr(first, "segment", 0) or 0) or None

    def separate(self, samples, *, shifts=1, overlap=0.25, segment=None):
        import torch
        from demucs.apply import apply_model

        from musicsplit.predictor.precision import autocast
        from musicsplit.predictor.segments import apply_batched

        if segment is not None and segment > self.max_segment:
            raise BadRequest(
                f"segment {segment} s is longer than this model allows ({self.max_segment:g} s)"
            )
        # Request tensors are read-only views of the body: np.require copies only those.
        wav = torch.from_numpy(np.require(samples, np.float32, ["C", "W"]))
        # Same normalisation as demucs.separate / demucs.api: zero-mean, unit-std mono reference.
        ref = wav.mean(0)
        mean, std = ref.mean(), ref.std() + 1e-8
        wav = (wav - mean) / std
        # One autocast region for the whole track: it casts each weight once and reuses
        # the cast for every segment (its cache keeps casts of leaf parameters).
        with torch.inference_mode(), autocast(self.device, self.precision):
            if self.segment_batch > 1:
                out = apply_batched(self.model, wav[None], shifts=shifts, overlap=overlap,
                                    segment=segment, device=self.device, batch=self.segment_batch)[0]
            else:
                out = apply_model(self.model, wav[None], shifts=shifts, split=True, overlap=overlap,
                                  segment=segment, device=self.device)[0]
        out = out.float() * std + mean
        return out.cpu().numpy().astype(np.float32, copy=False)


def _load_pretrained(name: str):
    from demucs.pretrained import get_model

    try:
        return get_model(name)
    except Exception as exc:  # hub / URL / checksum failures all mean the same to an operator
        raise ModelLoadError(
            f"could not fetch pretrained Demucs model {name!r} "
            f"(Hugging Face hub, then dl.fbaipublicfiles.com): {exc}. Without network access, "
            "point --model_dir / storageUri at a model dir holding the checkpoint files"
        ) from None


def _builtin_baseline():
    from musicsplit.predictor.baseline import DSPBaseline

    return DSPBaseline()


# What KServe's storage initializer fetches. `hf://owner/repo[:revision]` is a Hugging Face
# repository, as KServe reads it (demucs' own `hf://` names a model, not a repository).
REMOTE_SCHEMES = ("s3://", "gs://", "https://", "http://", "hdfs://", "webhdfs://", "pvc://", "oci://", "hf://")


def _download(uri: str) -> str:
    """Remote storageUri without KServe's storage initializer: fetch it with kserve-storage."""
    try:
        from kserve_storage import Storage
    except ImportError:
        raise ModelLoadError(
            f"{uri} is remote: let KServe's storage initializer mount it at /mnt/models, "
            "or install kserve-storage (pip install 'kserve[storage]') to fetch it here"
        ) from None
    try:
        return Storage.download(uri)
    except Exception as exc:  # each backend raises its own types
        raise ModelLoadError(f"could not download {uri}: {exc}") from None


def load(model_dir: str, device: str = "auto", precision: str = "auto", segment_batch: int = 0) -> LoadedModel:
    """Load from a model dir, a storage URI (`s3://`, `hf://owner/repo`, ...),
    `builtin://dsp-baseline` or a pretrained name (Demucs fetches it).

    `precision` and `segment_batch` are the settings (auto, fp32, bf16, fp16; 0 = auto);
    the DSP baseline ignores both and serves fp32.
    """
    import time

    from musicsplit.predictor import precision as precisions
    from musicsplit.predictor.segments import resolve_segment_batch

    start = time.perf_counter()
    try:
        precision = precisions.parse(precision)  # a typo fails every model, the baseline too
    except precisions.PrecisionError as exc:
        raise ModelLoadError(str(exc)) from None

    def demucs(model):
        try:
            served = precisions.resolve(precision, precisions.capability_of(dev))
        except precisions.PrecisionError as exc:
            raise ModelLoadError(str(exc)) from None
        return DemucsSeparator(model, dev, served, resolve_segment_batch(segment_batch, dev))

    source = model_dir.removeprefix("file://")
    if source.startswith("hf://") and "/" not in source.removeprefix("hf://"):
        source = "pretrained://" + source.removeprefix("hf://")  # demucs' `hf://htdemucs`: a model name
    if source.startswith(REMOTE_SCHEMES):
        source = _download(source)
    manifest = Manifest()
    if source == BUILTIN_BASELINE:
        separator, name, version, arch, dev = _builtin_baseline(), "dsp-baseline", "builtin-1", "dsp-baseline", "cpu"
    elif source.startswith("pretrained://") or source in PRETRAINED:
        name = source.removeprefix("pretrained://")
        dev = _pick_device(device)
        separator = demucs(_load_pretrained(name))
        version, arch = f"pretrained-{name}", type(separator.model).__name__
    else:
        directory = Path(source)
        if not directory.is_dir():
            raise ModelLoadError(
                f"model dir {directory} does not exist; mount the model (KServe storageUri) "
                f"there, or use a pretrained name ({', '.join(sorted(PRETRAINED))})"
            )
        if (directory / MANIFEST).is_file():
            manifest = Manifest.read(directory / MANIFEST)
            verify_files(directory, manifest.files)
        version = manifest.version or derived_version(directory)
        if manifest.architecture == "dsp-baseline":
            separator, name, arch, dev = _builtin_baseline(), manifest.name or "dsp-baseline", "dsp-baseline", "cpu"
        else:
            dev = _pick_device(device)
            name, model = load_demucs_dir(directory, manifest)
            separator = demucs(model)
            arch = manifest.architecture or type(model).__name__
        if manifest.stems and list(manifest.stems) != list(separator.sources):
            raise ModelLoadError(
                f"{MANIFEST} says stems {manifest.stems} but the model produces {separator.sources}"
            )
    return LoadedModel(separator, name, version, arch, dev, manifest, time.perf_counter() - start,
                       getattr(separator, "precision", "fp32"))
