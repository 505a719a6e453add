"""Model dirs in every form Demucs publishes: the Hugging Face layout of demucs 4.1
(`<name>.yaml` + `<sig>.safetensors`), the legacy `<sig>-<sha8>.th` layout, single
models and weighted bags, all through the predictor's load path."""

from __future__ import annotations

import shutil
from fractions import Fraction

import numpy as np
import pytest
import yaml

from musicsplit.predictor.loading import ModelLoadError, load
from tests.fixtures.checkpoints import make_model_dir, save_safetensors, tiny_hdemucs, tiny_htdemucs

WEIGHTS = [[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 0.5, 1.0]]


def _mix(seconds: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.standard_normal((2, int(44100 * seconds))) * 0.1).astype(np.float32)


def test_hf_layout_separates_exactly_as_the_same_weights_in_the_th_layout(tmp_path):
    """A weighted bag of two models stored as fp16, the way both layouts ship it."""
    from safetensors import safe_open
    import torch

    common = dict(bag=2, half=True, weights=WEIGHTS, segment=Fraction(3, 2))  # short: a fast forward pass
    hf = make_model_dir(tmp_path / "hf", "tiny", layout="hf", **common)
    th = make_model_dir(tmp_path / "th", "tiny", layout="th", **common)
    assert not list(hf.glob("*.th")) and not list(th.glob("*.safetensors"))
    with safe_open(str(hf / "00000000.safetensors"), framework="pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16

    from_hf, from_th = load(str(hf), "cpu", "fp32"), load(str(th), "cpu", "fp32")

    bag = from_hf.separator.model
    assert (from_hf.name, from_hf.version) == ("tiny", "1.0.0")
    assert len(bag.models) == 2 and bag.weights == WEIGHTS
    assert bag.models[0].segment == Fraction(3, 2)  # init arguments decoded from the metadata
    mix = _mix()
    np.testing.assert_array_equal(from_hf.separator.separate(mix, shifts=0),
                                  from_th.separator.separate(mix, shifts=0))


@pytest.mark.parametrize("layout", ["hf", "th"])
def test_a_single_model_without_a_bag_yaml_loads(tmp_path, layout):
    directory = make_model_dir(tmp_path / layout, "solo", layout=layout, kind="hdemucs", manifest=False)
    (directory / "solo.yaml").unlink()
    model = load(str(directory), "cpu")
    assert type(model.separator.model).__name__ == "HDemucs"
    assert model.name == "00000000" and model.version.startswith("sha-")


def test_fp32_safetensors_with_the_optional_structure_metadata_load(tmp_path):
    built = tiny_hdemucs(3)
    save_safetensors(built, tmp_path, "plain")
    save_safetensors(built, tmp_path / "nested", "nested", structure=True)
    plain = load(str(tmp_path), "cpu").separator.model
    nested = load(str(tmp_path / "nested"), "cpu").separator.model
    for want, a, b in zip(built[0].state_dict().values(), plain.state_dict().values(),
                          nested.state_dict().values()):
        assert want.dtype == a.dtype and a.equal(want) and b.equal(want)


def test_a_bag_yaml_naming_a_signature_in_neither_layout_says_what_it_looked_for(tmp_path):
    directory = make_model_dir(tmp_path / "m", "htdemucs", layout="hf", manifest=False)
    (directory / "htdemucs.yaml").write_text(yaml.safe_dump({"models": ["00000000", "955717e8"]}))
    with pytest.raises(ModelLoadError) as err:
        load(str(directory), "cpu")
    message = str(err.value)
    assert str(directory) in message and "955717e8" in message
    assert "955717e8.safetensors" in message and "955717e8-<sha8>.th" in message


def test_the_manifest_hashes_safetensors_files_like_any_other(tmp_path):
    directory = make_model_dir(tmp_path / "m", "m", layout="hf")
    assert "00000000.safetensors" in yaml.safe_load((directory / "musicsplit.yaml").read_text())["files"]
    victim = directory / "00000000.safetensors"
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF  # a flipped bit in the weights, the header still parses
    victim.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256 mismatch for .*00000000.safetensors"):
        load(str(directory), "cpu")


def test_a_model_file_the_manifest_does_not_list_is_refused(tmp_path):
    """Hashes that cover only some files would let the others load unchecked."""
    directory = make_model_dir(tmp_path / "m", "m", layout="hf", bag=2)
    doc = yaml.safe_load((directory / "musicsplit.yaml").read_text())
    del doc["files"]["00000001.safetensors"]
    (directory / "musicsplit.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ModelLoadError, match="lists sha256s but not 00000001.safetensors"):
        load(str(directory), "cpu")


def test_the_version_derived_without_a_manifest_covers_safetensors_weights(tmp_path):
    a = make_model_dir(tmp_path / "a", "m", layout="hf", manifest=False, seed=1)
    # a copy, as a bucket sync leaves it (the safetensors writer orders its json header
    # differently on every write, so the same weights written twice are other bytes)
    b = shutil.copytree(a, tmp_path / "b")
    c = shutil.copytree(a, tmp_path / "c")
    save_safetensors(tiny_htdemucs(seed=2), c, "00010000")  # other weights, same file name
    assert sorted(p.name for p in c.iterdir()) == ["00010000.safetensors", "m.yaml"]
    versions = [load(str(d), "cpu").version for d in (a, b, c)]
    assert versions[0].startswith("sha-") and versions[0] == versions[1]
    assert versions[2] != versions[0]


def test_a_damaged_safetensors_file_is_a_load_error_naming_the_model(tmp_path):
    directory = make_model_dir(tmp_path / "m", "m", layout="hf", manifest=False)
    (directory / "00000000.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(ModelLoadError, match=f"could not load Demucs model 'm' from {directory}"):
        load(str(directory), "cpu")


def test_hf_storage_uri_is_fetched_as_kserve_fetches_it_then_loaded(tmp_path, monkeypatch):
    """`hf://owner/repo:revision` goes through kserve-storage's Hugging Face download (the
    storage initializer's code); only the hub itself is replaced, by a copy of a local repo."""
    import huggingface_hub

    repo = make_model_dir(tmp_path / "hub", "htdemucs", layout="hf")
    calls = []

    def snapshot_download(repo_id, revision=None, local_dir=None, **_):
        calls.append((repo_id, revision))
        shutil.copytree(repo, local_dir, dirs_exist_ok=True)
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model = load("hf://someone/HTDemucs:abc123", "cpu")
    assert calls == [("someone/HTDemucs", "abc123")]
    assert (model.name, model.version) == ("htdemucs", "1.0.0")
