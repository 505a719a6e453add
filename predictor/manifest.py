"""Writing a model dir's `musicsplit.yaml`: the release's name and version, and the
sha256 of every file Demucs reads from the dir, in either layout.

    musicsplit model-manifest DIR --version 4.0.0 [--name htdemucs] [--released ...] [--source URL]

The dir is loaded first (on CPU, fp32), so a manifest is only written for weights
the predictor can serve; stems and sample rate come from the model itself.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from musicsplit.predictor.loading import load
from musicsplit.predictor.modeldir import MANIFEST, ModelLoadError, model_files, sha256_file


def write_manifest(directory: Path, version: str, name: str | None = None, released: str | None = None,
                   source: str | None = None) -> dict:
    """Load the dir, then write DIR/musicsplit.yaml; returns what was written."""
    directory = Path(directory)
    if (directory / MANIFEST).exists():
        raise ModelLoadError(f"{directory / MANIFEST} exists: remove it to write a new one")
    files = model_files(directory)
    if name:  # the bag to serve, where the dir holds several
        (directory / MANIFEST).write_text(yaml.safe_dump({"name": name}))
    try:
        loaded = load(str(directory), "cpu", "fp32")
    finally:
        (directory / MANIFEST).unlink(missing_ok=True)
    doc = {
        "name": loaded.name,
        "version": str(version),
        "released": released,
        "source": source,
        "architecture": loaded.architecture,
        "stems": list(loaded.separator.sources),
        "sample_rate": int(loaded.separator.samplerate),
        "files": {p.name: sha256_file(p) for p in files},
    }
    doc = {k: v for k, v in doc.items() if v is not None}
    (directory / MANIFEST).write_text(yaml.safe_dump(doc, sort_keys=False))
    return doc
