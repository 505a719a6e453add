"""Rendered objects checked against the schemas a Kubernetes 1.32 API server
and the CRDs' own schemas would apply, each by a validator nobody here wrote:

- built-in kinds: kubernetes-validate's 1.32 schemas, strict (unknown fields
  are errors, as with `kubectl apply --validate=strict`);
- SeparationModel, ClusterKopfPeering: the CRDs in charts/musicsplit/crds/ (jsonschema);
- prometheus-operator kinds: @kubernetes-models/prometheus-operator (npm,
  validators generated from prometheus-operator's CRDs), run by node;
- KServe's ClusterServingRuntime: no package carries its CRD, so its spec is
  checked against the models KServe generates from the same Go types (the
  kserve package the predictor serves with: field names and types, strict),
  and every embedded Kubernetes type (containers, tolerations, volumes)
  against kubernetes-validate's 1.32 definitions.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from tests.kube.structural import closed

from .conftest import CHART_DIR

KUBE_VERSION = "1.32"
MODELS_DIR = Path(os.environ.get("KUBERNETES_MODELS_DIR", "/opt/musicsplit/kubernetes-models"))
MONITORING_GROUP = "monitoring.coreos.com"


def builtin_error(obj: dict) -> str | None:
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
    except SchemaNotFoundError as e:
        return e.message
    return None


@functools.cache
def _crd_validators() -> dict[tuple[str, str], jsonschema.Validator]:
    out = {}
    for path in (CHART_DIR / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = closed(version["schema"]["openAPIV3Schema"])
            # OpenAPI v3.0 schemas: draft 4 semantics (boolean exclusiveMinimum).
            out[(f"{group}/{version['name']}", kind)] = jsonschema.Draft4Validator(
                schema, format_checker=jsonschema.FormatChecker())
    return out


def crd_error(obj: dict) -> str | None:
    validator = _crd_validators().get((obj["apiVersion"], obj["kind"]))
    if validator is None:
        return f"no CRD in the chart for {obj['apiVersion']} {obj['kind']}"
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    return "; ".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors) or None


def monitoring_errors(objects: list[dict]) -> dict[str, str | None]:
    """prometheus-operator objects by "Kind/name": the validator's error, or None."""
    if not objects:
        return {}
    script = Path(__file__).with_name("validate_monitoring.mjs")
    out = subprocess.run(["node", str(script), str(MODELS_DIR)], input=json.dumps(objects),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{out.stderr}\n(.ci/install-charts.sh installs the models in {MODELS_DIR})"
    return {f"{r['kind']}/{r['name']}": r["error"] for r in json.loads(out.stdout)}


@functools.cache
def _kube_registry():
    """kubernetes-validate's 1.32 definitions (strict), to check one embedded type at a time."""
    from importlib.resources import files

    from referencing import Registry, Resource

    defs = json.loads((files("kubernetes_validate") / "kubernetes-json-schema"
                       / f"v{KUBE_VERSION}.0-local-strict" / "_definitions.json").read_text())
    return Resource.from_contents(defs) @ Registry(), defs["$id"]


def _kube_type_errors(value, definition: str, path: str) -> list[str]:
    registry, base = _kube_registry()
    validator = jsonschema.Draft202012Validator({"$ref": f"{base}#/$defs/{definition}"}, registry=registry)
    return [f"{path}.{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(value)]


# Kubernetes types KServe's models name, by their definition in the API's schema.
KUBE_TYPES = {"V1ObjectMeta": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}


def _kserve_errors(value, type_name: str, path: str) -> list[str]:
    """Check `value` against a type name as KServe's generated models spell it."""
    import kserve.models

    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{path}: want a list"]
        return [e for i, item in enumerate(value) for e in _kserve_errors(item, type_name[5:-1], f"{path}[{i}]")]
    if type_name.startswith("dict("):
        value_type = type_name[5:-1].split(",", 1)[1].strip()
        if not isinstance(value, dict):
            return [f"{path}: want a map"]
        return [e for k, v in value.items() for e in _kserve_errors(v, value_type, f"{path}.{k}")]
    scalars = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if type_name in scalars:
        ok = isinstance(value, scalars[type_name]) and not (type_name == "int" and isinstance(value, bool))
        return [] if ok else [f"{path}: want {type_name}, got {value!r}"]
    model = getattr(kserve.models, type_name, None)
    if model is None:  # a Kubernetes type, e.g. V1Container -> io.k8s.api.core.v1.Container
        definition = KUBE_TYPES.get(type_name, f"io.k8s.api.core.v1.{type_name.removeprefix('V1')}")
        return _kube_type_errors(value, definition, path)
    if not isinstance(value, dict):
        return [f"{path}: want an object ({type_name})"]
    fields = {json_name: model.openapi_types[attr] for attr, json_name in model.attribute_map.items()}
    errors = [f"{path}.{k}: unknown field of {type_name}" for k in value if k not in fields]
    return errors + [e for k, v in value.items() if k in fields for e in _kserve_errors(v, fields[k], f"{path}.{k}")]


def serving_runtime_error(obj: dict) -> str | None:
    errors = _kserve_errors(obj, f"V1alpha1{obj['kind']}", obj["kind"])
    if not obj.get("spec", {}).get("containers"):
        errors.append("spec.containers: required")
    return "; ".join(errors) or None


CUSTOM = {
    "musicsplit.io/v1alpha1": crd_error,
    "kopf.dev/v1": crd_error,
    "serving.kserve.io/v1alpha1": serving_runtime_error,
}


def errors(objects: list[dict]) -> dict[str, str]:
    """Every object that fails its schema, as "Kind/name": why. An object of a
    kind no validator knows fails too: nothing ships unchecked."""
    found = {}
    monitoring = [o for o in objects if o["apiVersion"].split("/")[0] == MONITORING_GROUP]
    for key, error in monitoring_errors(monitoring).items():
        if error:
            found[key] = error
    for obj in objects:
        if obj["apiVersion"].split("/")[0] == MONITORING_GROUP:
            continue
        check = CUSTOM.get(obj["apiVersion"], builtin_error)
        error = check(obj)
        if error:
            found[f"{obj['kind']}/{obj['metadata']['name']}"] = error
    return found
