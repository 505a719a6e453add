"""CRD schemas as the API server reads them, without one.

- `structural_errors`: the rules apiextensions-apiserver refuses a CRD by
  (k8s.io/apiextensions-apiserver pkg/apiserver/schema/validation.go and
  pkg/apis/apiextensions/validation/validation.go), worded and located like
  its messages, so a test says which line of which file to fix in a second
  instead of after starting a server. tests/kube/test_manifests.py applies
  the same CRDs to a real server: that is the proof, this is the quick loop.
- `closed`: a structural schema as jsonschema sees it. The server prunes
  fields a structural schema does not declare (and `kubectl`'s strict field
  validation refuses them); jsonschema allows them unless told.
"""

from __future__ import annotations

# Keys a value validation under allOf/anyOf/oneOf/not must leave to the
# structural part of the schema.
_NOT_IN_JUNCTORS = ("type", "additionalProperties", "default", "title", "description", "nullable",
                    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
                    "x-kubernetes-int-or-string", "x-kubernetes-list-map-keys", "x-kubernetes-list-type",
                    "x-kubernetes-map-type")
_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")


def structural_errors(schema: dict, path: str = "openAPIV3Schema") -> list[str]:
    """Every reason the API server would refuse this openAPIV3Schema as not structural."""
    errors: list[str] = []
    _walk(schema, path, "root", errors)
    return errors


def _walk(s: dict, path: str, level: str, errors: list[str]) -> None:
    if not isinstance(s, dict):
        errors.append(f"{path}: must be a schema object")
        return
    props = s.get("properties") or {}
    extra = s.get("additionalProperties")
    if props and extra is not None and extra is not True:
        errors.append(f"{path}.additionalProperties: Forbidden: additionalProperties and properties are "
                      "mutual exclusive")
    if extra is not None and level == "root":
        errors.append(f"{path}.additionalProperties: Forbidden: must not be used at the root")
    loose = s.get("x-kubernetes-int-or-string") or s.get("x-kubernetes-preserve-unknown-fields")
    if not s.get("type") and not loose:
        where = {"root": "at the root", "item": "for specified array items", "field": "for specified object fields"}
        errors.append(f"{path}.type: Required value: must not be empty {where[level]}")
    if level == "root" and s.get("type") not in (None, "object"):
        errors.append(f"{path}.type: Invalid value: must be object at the root")
    if s.get("type") == "null":
        errors.append(f"{path}.type: Forbidden: type cannot be set to null, use nullable as an alternative")
    if s.get("type") == "array" and "items" not in s:
        errors.append(f"{path}.items: Required value: must be specified")
    if isinstance(s.get("items"), list):
        errors.append(f"{path}.items: Forbidden: items must be a schema object and not an array")
    for key in ("additionalItems", "patternProperties"):
        if key in s:
            errors.append(f"{path}.{key}: Forbidden: {key} is not supported")
    if s.get("uniqueItems") is True:
        errors.append(f"{path}.uniqueItems: Forbidden: uniqueItems cannot be set to true")
    if level == "root" and "metadata" in props:
        meta = props["metadata"]
        if set(meta) - {"type"} - {"properties"} or set(meta.get("properties") or {}) - {"name", "generateName"}:
            errors.append(f"{path}.properties[metadata]: Forbidden: must not specify anything other than name "
                          "and generateName, but metadata is implicitly specified")
    keys = s.get("x-kubernetes-list-map-keys") or []
    if keys:
        if s.get("x-kubernetes-list-type") != "map":
            errors.append(f"{path}.x-kubernetes-list-type: Required value: must be map if "
                          "x-kubernetes-list-map-keys is non-empty")
        item = s.get("items") or {}
        for k in keys:
            if k not in (item.get("required") or []) and "default" not in (item.get("properties") or {}).get(k, {}):
                errors.append(f"{path}.items.properties[{k}].default: Required value: this property is in "
                              "x-kubernetes-list-map-keys, so it must have a default or be a required property")
    for j in _JUNCTORS:
        for i, sub in enumerate(s[j] if isinstance(s.get(j), list) else [s[j]] if j in s else []):
            _junctor(sub, f"{path}.{j}[{i}]", errors)
    for name, sub in props.items():
        _walk(sub, f"{path}.properties[{name}]", "field", errors)
    if isinstance(s.get("items"), dict):
        _walk(s["items"], f"{path}.items", "item", errors)
    if isinstance(extra, dict):
        _walk(extra, f"{path}.additionalProperties", "field", errors)


def _junctor(s: dict, path: str, errors: list[str]) -> None:
    """Under allOf/anyOf/oneOf/not only value validations: no types, defaults, descriptions."""
    if not isinstance(s, dict):
        return
    for key in _NOT_IN_JUNCTORS:
        if key in s and not (key == "type" and s.get("type") in ("integer", "string")):  # int-or-string's anyOf
            errors.append(f"{path}.{key}: Forbidden: must be empty to be structural")
    for name, sub in (s.get("properties") or {}).items():
        _junctor(sub, f"{path}.properties[{name}]", errors)
    if isinstance(s.get("items"), dict):
        _junctor(s["items"], f"{path}.items", errors)
    for j in _JUNCTORS:
        for i, sub in enumerate(s[j] if isinstance(s.get(j), list) else [s[j]] if j in s else []):
            _junctor(sub, f"{path}.{j}[{i}]", errors)


def closed(schema: dict) -> dict:
    """The schema with `additionalProperties: false` wherever the server would
    prune (or strictly refuse) undeclared fields."""
    if not isinstance(schema, dict):
        return schema
    out = {k: (closed(v) if k in ("items", "additionalProperties") else v) for k, v in schema.items()}
    if "properties" in schema:
        out["properties"] = {k: closed(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out
