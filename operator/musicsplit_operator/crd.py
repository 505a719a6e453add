"""Write the SeparationModel CRD's field descriptions from spec.py's field docstrings.

    python -m musicsplit.operator.crd            # rewrite manifests/crd.yaml and the chart's copy
    python -m musicsplit.operator.crd --check    # exit 1 and name the stale files

manifests/crd.yaml holds the schema (types, patterns, enums, CEL rules, printer
columns, status' descriptions): edit it there. Every `description` under
`spec` comes from the docstring of the matching field in spec.py (the class's
docstring for `spec` itself), so `kubectl explain separationmodel.spec...` says
what the operator reads. Run it after changing either and commit both files;
tests/operator/test_crd.py fails on a stale file or an undocumented field.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel

from .spec import SeparationModelSpec

ROOT = Path(__file__).resolve().parents[2]
FILES = (ROOT / "manifests" / "crd.yaml", ROOT / "charts" / "musicsplit" / "crds" / "separationmodels.musicsplit.io.yaml")
HEADER = """\
# SeparationModel: one served separation model and the rollout of its versions.
# The schema refuses bad specs at `kubectl apply` time; the operator re-checks
# what a schema cannot say (steps strictly increasing) and reports it in status.
# Descriptions under spec are generated from operator/musicsplit_operator/spec.py:
# edit them there and run `python -m musicsplit.operator.crd` (the rest: here).
"""
# Kubernetes' own types the spec passes through (spec.py keeps them as dicts).
KUBERNETES_DOCS = {
    "tolerations": {
        "key": "Taint key the toleration applies to; empty with operator Exists matches all taints.",
        "operator": "Exists (any value) or Equal (the value below); default Equal.",
        "value": "Taint value the toleration matches (operator Equal).",
        "effect": "Taint effect to match (NoSchedule, PreferNoSchedule, NoExecute); empty matches all.",
        "tolerationSeconds": "With effect NoExecute - how long the pod stays bound to a tainted node.",
    },
}
ROOT_DOCS = {
    "apiVersion": "The versioned schema of this object (musicsplit.io/v1alpha1).",
    "kind": "SeparationModel.",
}  # metadata: no description (a structural schema says nothing of metadata but name and generateName)


class UndocumentedField(ValueError):
    """A CRD field with no field, or no docstring, in spec.py."""


def _doc(text: str | None) -> str:
    return " ".join((text or "").split())


def _model_of(annotation) -> tuple[type[BaseModel] | None, bool]:
    """(the pydantic model a field holds, whether in a list), or (None, ...) for plain values."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _model_of(inner[0]) if len(inner) == 1 else (None, False)
    if typing.get_origin(annotation) is list and args:
        model, _ = _model_of(args[0])
        return model, True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def _describe(schema: dict, model: type[BaseModel], path: str) -> None:
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    for name, prop in (schema.get("properties") or {}).items():
        where = f"{path}.{name}"
        field = fields.get(name)
        if field is None:
            raise UndocumentedField(f"{where}: in the CRD but not in {model.__name__} (spec.py)")
        if not _doc(field.description):
            raise UndocumentedField(f"{where}: {model.__name__}.{name} has no docstring in spec.py")
        prop["description"] = _doc(field.description)
        inner, listed = _model_of(field.annotation)
        target = prop.get("items") if listed else prop
        if inner is not None and target and "properties" in target:
            _describe(target, inner, where)
        elif name in KUBERNETES_DOCS:
            for sub, sub_schema in ((target or {}).get("items") or target or {}).get("properties", {}).items():
                sub_schema["description"] = KUBERNETES_DOCS[name][sub]
    undeclared = set(fields) - set(schema.get("properties") or {})
    if undeclared:
        raise UndocumentedField(f"{path}: {model.__name__} has fields the CRD lacks: {sorted(undeclared)}")


def generate(crd: dict) -> dict:
    """The CRD with every spec field's description from spec.py."""
    for version in crd["spec"]["versions"]:
        root = version["schema"]["openAPIV3Schema"]
        for name, text in ROOT_DOCS.items():
            root["properties"][name]["description"] = text
        spec = root["properties"]["spec"]
        spec["description"] = _doc(SeparationModelSpec.__doc__)
        _describe(spec, SeparationModelSpec, "spec")
    return crd


def render(source: Path | None = None) -> str:
    crd = generate(yaml.safe_load((source or FILES[0]).read_text()))
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=110, allow_unicode=True)


def stale(files: tuple[Path, ...] | None = None) -> list[Path]:
    files = files or FILES
    fresh = render(files[0])
    return [f for f in files if not f.exists() or f.read_text() != fresh]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m musicsplit.operator.crd", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        for f in bad:
            print(f"stale: {f} (run: python -m musicsplit.operator.crd)", file=sys.stderr)
        return 1 if bad else 0
    fresh = render()
    for f in FILES:
        f.write_text(fresh)
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
