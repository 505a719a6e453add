"""Finding, verifying and loading a model: model dir, pretrained name or builtin.

A model dir holds the files Demucs publishes, in either of its layouts: the
Hugging Face one of demucs 4.1 (a bag `<name>.yaml` plus one `<sig>.safetensors`
per model, class and init arguments as json in the safetensors metadata: what
KServe's `hf://owner/repo` storage initializer leaves at /mnt/models) or the
legacy one (`<sig>-<sha8>.th` packages and bag yamls, as in demucs/remote/),
plus an optional `musicsplit.yaml` manifest. Everything here runs before the
server says ready; any failure is a ModelLoadError with a message an operator
can act on.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

from musicsplit.errors import BadRequest

log = logging.getLogger(__name__)

MANIFEST = "musicsplit.yaml"
BUILTIN_BASELINE = "builtin://dsp-baseline"
# Names Demucs resolves itself (Hugging Face hub first, then the official URLs).
PRETRAINED = {
    "htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi",
    "mdx", "mdx_extra", "mdx_q", "mdx_extra_q",
}


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says why and what to check."""


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
class Manifest:
    name: str | None = None
    version: str | None = None
    released: str | None = None
    source: str | None = None
    architecture: str | None = None
    stems: list[str] | None = None
    sample_rate: int | None = None
    files: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> "Manifest":
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ModelLoadError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise ModelLoadError(f"{path} must be a mapping of fields (name, version, files, ...)")
        known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        if "version" in known and known["version"] is not None:
            known["version"] = str(known["version"])
        return cls(**known)


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# What Demucs reads from a model dir: bag yamls, safetensors (Hugging Face layout), .th (legacy).
MODEL_SUFFIXES = (".yaml", ".safetensors", ".th")


def model_files(directory: Path) -> list[Path]:
    """The files of a dir Demucs may read (the manifest aside)."""
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.suffix in MODEL_SUFFIXES and p.name != MANIFEST)


def verify_files(directory: Path, expected: dict[str, str]) -> None:
    """Check every file the manifest lists against its sha256; where it lists any, a model
    file it does not list is refused too (it would load unchecked)."""
    if not isinstance(expected, dict):
        raise ModelLoadError(f"{MANIFEST}: `files` must map each file name to its sha256")
    unlisted = [p.name for p in model_files(directory) if p.name not in expected] if expected else []
    if unlisted:
        raise ModelLoadError(
            f"{MANIFEST} in {directory} lists sha256s but not {', '.join(unlisted)}: add them "
            "(`musicsplit model-manifest` writes every file's) or remove the files"
        )
    for name, want in expected.items():
        path = directory / name
        if not path.is_file():
            raise ModelLoadError(f"{MANIFEST} lists {name}, which is missing from {directory}")
        got = sha256_file(path)
        if got != want.lower():
            raise ModelLoadError(
                f"sha256 mismatch for {path}: manifest says {want}, file has {got}; "
                "the model dir is corrupt or was changed after release"
            )


def derived_version(directory: Path) -> str:
    """A version for dirs without a manifest: hash of the model files' hashes."""
    digest = hashlib.sha256()
    for path in model_files(directory):
        digest.update(path.name.encode() + b"\0" + sha256_file(path).encode())
    return "sha-" + digest.hexdigest()[:12]


def _checkpoint_sigs(directory: Path) -> set[str]:
    """Signatures of the single-model files in a dir, in both Demucs layouts."""
    return {p.stem for p in directory.glob("*.safetensors")} | {
        p.stem.rsplit("-", 1)[0] for p in directory.glob("*.th")
    }


def _model_to_load(directory: Path, manifest: Manifest) -> str:
    """The bag or signature to load from a dir: the manifest's name, or the only one."""
    bags = sorted(p.stem for p in directory.glob("*.yaml") if p.name != MANIFEST)
    sigs = sorted(_checkpoint_sigs(directory))
    if manifest.name and (manifest.name in bags or manifest.name in sigs):
        return manifest.name
    if len(bags) == 1:
        return bags[0]
    if not bags and len(sigs) == 1:
        return sigs[0]
    if not bags and not sigs:
        raise ModelLoadError(
            f"{directory} holds no Demucs model (no <sig>.safetensors or <sig>-<sha8>.th "
            "checkpoint, no bag .yaml)"
        )
    raise ModelLoadError(
        f"{directory} holds several models (bags {bags}, checkpoints {sigs}); "
        f"set `name` in {MANIFEST} to choose one"
    )


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


def _model_dir_repo(directory: Path):
    """Demucs' LocalRepo, taught the Hugging Face layout: `<sig>.safetensors` files load
    through demucs.hf, `<sig>-<sha8>.th` through LocalRepo (checksum included)."""
    from demucs.hf import load_safetensors_model
    from demucs.repo import LocalRepo

    class ModelDirRepo(LocalRepo):
        def scan(self):
            super().scan()
            # Where both layouts hold a signature, the safetensors file wins, as demucs 4.1
            # tries the hub's safetensors before the legacy .th files.
            for file in self.root.glob("*.safetensors"):
                self._models[file.stem] = file
                self._checksums.pop(file.stem, None)

        def get_model(self, sig):
            file = self._models.get(sig)
            if file is not None and file.suffix == ".safetensors":
                return load_safetensors_model(file)
            return super().get_model(sig)

    return ModelDirRepo(directory)


def _check_bag_members(directory: Path, name: str, repo) -> None:
    """A bag yaml naming a model the dir lacks in both layouts: say which and where we looked."""
    bag_file = directory / f"{name}.yaml"
    if repo.has_model(name) or not bag_file.is_file():
        return
    try:
        bag = yaml.safe_load(bag_file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ModelLoadError(f"{bag_file} is not valid YAML: {exc}") from None
    sigs = bag.get("models") if isinstance(bag, dict) else None
    if not isinstance(sigs, list) or not sigs:
        raise ModelLoadError(f"{bag_file} is not a Demucs bag: it needs a `models:` list of signatures")
    for sig in sigs:
        if not repo.has_model(str(sig)):
            raise ModelLoadError(
                f"{bag_file.name} in {directory} names model signature {sig}, but the dir holds "
                f"neither {sig}.safetensors (Hugging Face layout) nor {sig}-<sha8>.th (legacy "
                "layout); copy every file of the model's release into the dir"
            )


def _load_demucs_dir(directory: Path, manifest: Manifest):
    from demucs.repo import AnyModelRepo, BagOnlyRepo, ModelLoadingError
    from safetensors import SafetensorError

    name = _model_to_load(directory, manifest)
    try:
        model_repo = _model_dir_repo(directory)  # refuses two .th files for one signature
    except ModelLoadingError as exc:
        raise ModelLoadError(f"could not load Demucs model {name!r} from {directory}: {exc}") from exc
    _check_bag_members(directory, name, model_repo)
    try:
        model = AnyModelRepo(model_repo, BagOnlyRepo(directory, model_repo)).get_model(name)
    except (ModelLoadingError, SafetensorError, KeyError, ValueError, TypeError, RuntimeError,
            OSError, ImportError, AttributeError) as exc:
        # a damaged file, metadata naming a class or argument this demucs lacks, a bad state dict
        raise ModelLoadError(f"could not load Demucs model {name!r} from {directory}: {exc}") from exc
    return name, model.eval()


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
            name, model = _load_demucs_dir(directory, manifest)
            separator = demucs(model)
            arch = manifest.architecture or type(model).__name__
        if manifest.stems and list(manifest.stems) != list(separator.sources):
            raise ModelLoadError(
                f"{MANIFEST} says stems {manifest.stems} but the model produces {separator.sources}"
            )
    return LoadedModel(separator, name, version, arch, dev, manifest, time.perf_counter() - start,
                       getattr(separator, "precision", "fp32"))
