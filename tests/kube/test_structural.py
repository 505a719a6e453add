"""Every CRD musicsplit ships, and the upstream ones it installs beside them, is
structural: the quick check (tests/kube/structural.py), no server needed. The
real server applying them is tests/kube/test_manifests.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.fixtures.kube import load_yaml
from tests.kube.conftest import MANIFESTS, upstream_crds
from tests.kube.structural import closed, structural_errors

CHART_CRDS = MANIFESTS.parent / "charts" / "musicsplit" / "crds"


def crds(path: Path) -> list[dict]:
    return [d for d in load_yaml(path) if d["kind"] == "CustomResourceDefinition"]


SHIPPED = sorted(MANIFESTS.glob("*crd*.yaml")) + sorted(CHART_CRDS.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED + upstream_crds(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_crd_is_structural(path):
    found = crds(path)
    assert found, f"{path}: no CustomResourceDefinition"
    for crd in found:
        for version in crd["spec"]["versions"]:
            errors = structural_errors(version["schema"]["openAPIV3Schema"])
            assert errors == [], f"{crd['metadata']['name']} {version['name']}:\n" + "\n".join(errors)


NOT_STRUCTURAL = [
    ({"type": "object", "properties": {"spec": {"type": "object", "additionalProperties": False,
                                                "properties": {"a": {"type": "string"}}}}},
     "openAPIV3Schema.properties[spec].additionalProperties: Forbidden: additionalProperties and properties are "
     "mutual exclusive"),
    ({"type": "object", "properties": {"spec": {"properties": {"a": {"type": "string"}}}}},
     "openAPIV3Schema.properties[spec].type: Required value: must not be empty for specified object fields"),
    ({"type": "object", "properties": {"metadata": {"type": "object", "description": "meta"}}},
     "openAPIV3Schema.properties[metadata]: Forbidden: must not specify anything other than name and generateName"),
    ({"type": "object", "properties": {"xs": {"type": "array"}}},
     "openAPIV3Schema.properties[xs].items: Required value: must be specified"),
    ({"type": "object", "properties": {"n": {"type": "integer", "anyOf": [{"minimum": 1, "description": "x"}]}}},
     "openAPIV3Schema.properties[n].anyOf[0].description: Forbidden: must be empty to be structural"),
]


@pytest.mark.parametrize("schema, error", NOT_STRUCTURAL)
def test_the_check_finds_what_the_server_refuses(schema, error):
    assert any(e.startswith(error) for e in structural_errors(schema)), structural_errors(schema)


@pytest.mark.slow
@pytest.mark.parametrize("schema, error", NOT_STRUCTURAL)
def test_the_real_server_refuses_it_in_the_same_words(kube, schema, error):
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.example.test"},
           "spec": {"group": "example.test", "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                    "versions": [{"name": "v1", "served": True, "storage": True,
                                  "schema": {"openAPIV3Schema": schema}}]}}
    with kube.server.http() as c:
        r = c.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", params={"dryRun": "All"}, json=crd)
    assert r.status_code == 422, r.text
    assert f"spec.validation.{error}" in r.json()["message"], r.json()["message"]


def test_closed_schema_refuses_undeclared_fields_where_the_server_prunes():
    import jsonschema

    schema = yaml.safe_load((MANIFESTS / "crd.yaml").read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    v = jsonschema.Draft4Validator(closed(schema))
    obj = {"spec": {"model": {"architecture": "htdemucs", "version": "1", "storageUri": "gs://m/1"}, "replicaz": 3},
           "status": {"anything": {"goes": 1}}}
    assert [list(e.absolute_path) for e in v.iter_errors(obj)] == [["spec"]]
