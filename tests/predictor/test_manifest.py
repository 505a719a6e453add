"""`musicsplit model-manifest`: a model dir's musicsplit.yaml written from the files it holds."""

from __future__ import annotations

import pytest
import yaml

from musicsplit.cli import main
from musicsplit.predictor.loading import ModelLoadError, load
from tests.fixtures.checkpoints import make_model_dir


def test_a_manifest_written_for_a_hugging_face_dir_pins_its_files_and_version(tmp_path, capsys):
    directory = make_model_dir(tmp_path / "htdemucs", "htdemucs", layout="hf", manifest=False, bag=2)
    assert main(["model-manifest", str(directory), "--version", "4.0.0", "--source", "hf://adefossez/HTDemucs"]) == 0
    doc = yaml.safe_load((directory / "musicsplit.yaml").read_text())
    assert set(doc["files"]) == {"htdemucs.yaml", "00000000.safetensors", "00000001.safetensors"}
    assert (doc["name"], doc["version"], doc["stems"], doc["sample_rate"]) == (
        "htdemucs", "4.0.0", ["drums", "bass", "other", "vocals"], 44100)
    assert load(str(directory), "cpu").version == "4.0.0"
    victim = directory / "00000001.safetensors"
    victim.write_bytes(victim.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ModelLoadError, match="sha256 mismatch for .*00000001.safetensors"):
        load(str(directory), "cpu")
    assert "3 files hashed" in capsys.readouterr().out


def test_no_manifest_is_written_for_a_dir_that_does_not_load(tmp_path, capsys):
    directory = make_model_dir(tmp_path / "m", "m", layout="hf", manifest=False)
    (directory / "m.yaml").write_text(yaml.safe_dump({"models": ["00000000", "missing1"]}))
    assert main(["model-manifest", str(directory), "--version", "1"]) == 1
    assert "missing1.safetensors" in capsys.readouterr().err
    assert not (directory / "musicsplit.yaml").exists()
