"""A model dir: which files it holds, the `musicsplit.yaml` manifest that pins them,
and loading its Demucs model through demucs' own repo code.

Both layouts Demucs publishes load: the Hugging Face one of demucs 4.1 (a bag
`<name>.yaml` plus one `<sig>.safetensors` per model, read by
`demucs.hf.load_safetensors_model`) and the legacy one (`<sig>-<sha8>.th`
checkpoints, read by demucs' `LocalRepo`), bags of either through demucs'
`BagOnlyRepo`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MANIFEST = "musicsplit.yaml"


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says why and what to check."""


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


def model_to_load(directory: Path, manifest: Manifest) -> str:
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


def load_demucs_dir(directory: Path, manifest: Manifest):
    from demucs.repo import AnyModelRepo, BagOnlyRepo, ModelLoadingError
    from safetensors import SafetensorError

    name = model_to_load(directory, manifest)
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
