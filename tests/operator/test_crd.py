"""The SeparationModel CRD's descriptions come from spec.py's field docstrings
(`python -m musicsplit.operator.crd`): committed fresh, every field documented."""

from __future__ import annotations

import copy

import pytest
import yaml

from musicsplit.operator import crd
from musicsplit.operator.spec import GPU


def _schema() -> dict:
    return yaml.safe_load(crd.FILES[0].read_text())


def test_committed_crds_are_a_fresh_render():
    assert crd.stale() == [], "run: python -m musicsplit.operator.crd (and commit manifests/ and charts/)"


def test_every_field_has_a_description():
    """What `kubectl explain separationmodel.spec...` shows; metadata's is the server's own."""
    missing = []

    def walk(schema: dict, path: str) -> None:
        for name, sub in (schema.get("properties") or {}).items():
            if name != "metadata" and not sub.get("description"):
                missing.append(f"{path}.{name}")
            walk(sub, f"{path}.{name}")
        if isinstance(schema.get("items"), dict):
            walk(schema["items"], f"{path}[]")

    for version in _schema()["spec"]["versions"]:
        walk(version["schema"]["openAPIV3Schema"], version["name"])
    assert missing == []


def test_a_description_is_the_field_docstring():
    version = _schema()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    gpu = version["properties"]["predictor"]["properties"]["resources"]["properties"]["gpu"]
    assert gpu["properties"]["count"]["description"] == " ".join(GPU.model_fields["count"].description.split())
    hook = version["properties"]["analysis"]["properties"]["webhooks"]["items"]["properties"]["timeout"]
    assert hook["description"] == "How long to wait for an answer, at most 5m."


def test_an_undocumented_field_is_named(monkeypatch):
    monkeypatch.setattr(GPU.model_fields["count"], "description", None)
    with pytest.raises(crd.UndocumentedField, match=r"spec\.predictor\.resources\.gpu\.count: GPU\.count has no"):
        crd.generate(_schema())


def test_a_crd_field_spec_py_does_not_read_is_named():
    doc = _schema()
    spec = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["replicas"]["properties"]["target"] = {"type": "integer"}
    with pytest.raises(crd.UndocumentedField, match=r"spec\.replicas\.target: in the CRD but not in Replicas"):
        crd.generate(copy.deepcopy(doc))


def test_check_names_a_stale_file(tmp_path, monkeypatch, capsys):
    files = (tmp_path / "crd.yaml", tmp_path / "copy.yaml")
    files[0].write_text(crd.FILES[0].read_text())
    files[1].write_text(crd.FILES[0].read_text().replace("How long to wait", "How long we wait"))
    monkeypatch.setattr(crd, "FILES", files)
    assert crd.main(["--check"]) == 1
    assert "copy.yaml" in capsys.readouterr().err and crd.stale(files) == [files[1]]
    assert crd.main([]) == 0 and crd.stale(files) == []
