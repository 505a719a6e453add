"""Model dirs load through Demucs' own repo code, with manifest checks and versions."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from musicsplit.predictor.loading import ModelLoadError, load
from tests.fixtures.checkpoints import make_model_dir


def test_bag_with_manifest_loads_with_manifest_version(tiny_model_dir):
    model = load(str(tiny_model_dir), "cpu")
    assert model.version == "1.0.0"
    assert model.name == "tiny"
    assert model.separator.sources == ["drums", "bass", "other", "vocals"]
    assert len(model.separator.model.models) == 2


def test_dir_without_manifest_gets_a_version_from_its_checkpoint_hashes(tmp_path):
    a = make_model_dir(tmp_path / "a", "m", manifest=False, seed=1)
    b = make_model_dir(tmp_path / "b", "m", manifest=False, seed=1)
    c = make_model_dir(tmp_path / "c", "m", manifest=False, seed=2)
    va, vb, vc = (load(str(d), "cpu").version for d in (a, b, c))
    assert va.startswith("sha-") and va == vb  # same weights, same version
    assert vc != va  # other weights, other version


def test_single_checkpoint_without_yaml_loads(tmp_path):
    directory = make_model_dir(tmp_path / "hd", "hd", kind="hdemucs", manifest=False)
    (directory / "hd.yaml").unlink()
    model = load(str(directory), "cpu")
    assert type(model.separator.model).__name__ == "HDemucs"


def test_tampered_checkpoint_is_refused_naming_the_file(tmp_path):
    directory = make_model_dir(tmp_path / "t", "t")
    victim = next(directory.glob("*.th"))
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=f"sha256 mismatch for .*{victim.name}"):
        load(str(directory), "cpu")


def test_manifest_listing_a_missing_file_is_refused(tmp_path):
    directory = make_model_dir(tmp_path / "m", "m")
    next(directory.glob("*.th")).unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load(str(directory), "cpu")


def test_manifest_stems_must_match_the_model(tmp_path):
    directory = make_model_dir(tmp_path / "s", "s")
    doc = yaml.safe_load((directory / "musicsplit.yaml").read_text())
    doc["stems"] = ["vocals", "accompaniment"]
    (directory / "musicsplit.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ModelLoadError, match="stems"):
        load(str(directory), "cpu")


def test_ambiguous_dir_asks_for_a_name(tmp_path):
    directory = make_model_dir(tmp_path / "x", "one", manifest=False)
    (directory / "two.yaml").write_text((directory / "one.yaml").read_text())
    with pytest.raises(ModelLoadError, match="several models"):
        load(str(directory), "cpu")


def test_missing_dir_says_where_to_mount(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist; mount the model"):
        load(str(tmp_path / "nope"), "cpu")


def test_cuda_requested_without_cuda_is_a_clear_error(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        load(str(tiny_model_dir), "cuda")


@pytest.mark.slow
def test_pretrained_name_without_network_fails_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="could not fetch pretrained Demucs model 'htdemucs'.*model dir"):
        load("htdemucs", "cpu")


def test_separation_matches_demucs_own_api(tiny_model_dir):
    """At fp32 the served separation is Demucs' (same normalisation, same chunking)."""
    from demucs.api import Separator
    import torch

    rng = np.random.default_rng(0)
    mix = (rng.standard_normal((2, 44100 * 3)) * 0.1).astype(np.float32)
    ours = load(str(tiny_model_dir), "cpu", "fp32").separator.separate(mix, shifts=0)
    reference = Separator(model="tiny", repo=tiny_model_dir, shifts=0, progress=False, device="cpu")
    _, stems = reference.separate_tensor(torch.from_numpy(mix), 44100)
    theirs = np.stack([stems[s].numpy() for s in ["drums", "bass", "other", "vocals"]])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.slow
def test_remote_storage_uri_without_kserve_storage_says_how_to_get_it():
    try:
        import kserve_storage  # noqa: F401
    except ImportError:
        with pytest.raises(ModelLoadError, match="storage initializer mount it at /mnt/models"):
            load("s3://models/htdemucs/v4", "cpu")
    else:
        with pytest.raises(ModelLoadError, match="could not download s3://models/htdemucs/v4"):
            load("s3://models/htdemucs/v4", "cpu")


def test_a_manifest_can_register_the_dsp_baseline_like_any_model(tmp_path):
    (tmp_path / "musicsplit.yaml").write_text(yaml.safe_dump(
        {"name": "floor", "version": "2.0.0", "architecture": "dsp-baseline", "files": {}}))
    model = load(str(tmp_path), "cpu")
    assert (model.name, model.version, model.architecture) == ("floor", "2.0.0", "dsp-baseline")
    mix = np.random.default_rng(0).standard_normal((2, 44100)).astype(np.float32) * 0.1
    stems = model.separator.separate(mix)
    np.testing.assert_allclose(stems.sum(0), mix, atol=1e-4)


def _load_in_server_model(directory, **settings):
    from musicsplit.predictor.model import SeparationModel
    from musicsplit.predictor.settings import PredictorSettings

    model = SeparationModel("m", PredictorSettings(model_dir=str(directory), warmup=False, **settings))
    return model, model.load()


def test_any_load_failure_is_reported_not_left_as_loading(tmp_path):
    directory = make_model_dir(tmp_path / "odd", "odd")
    (directory / "musicsplit.yaml").write_text(yaml.safe_dump({"version": "1", "files": ["odd.yaml"]}))
    model, ok = _load_in_server_model(directory)
    assert not ok and not model.ready and model.load_error
    assert "failed to load" in model.not_ready_error().message


def test_a_model_dir_of_another_version_than_expected_fails_its_load(tiny_model_dir):
    model, ok = _load_in_server_model(tiny_model_dir, expected_version="2.0.0")
    assert not ok
    assert "holds version 1.0.0, the deployment expects 2.0.0" in model.load_error
    model, ok = _load_in_server_model(tiny_model_dir, expected_version="1.0.0")
    assert ok and model.ready


def test_a_dir_without_manifest_is_served_as_the_expected_version(tmp_path):
    directory = make_model_dir(tmp_path / "bare", "bare", manifest=False)
    model, ok = _load_in_server_model(directory, expected_version="4.0.1")
    assert ok and model.version == "4.0.1" and model.labels()["model_version"] == "4.0.1"
