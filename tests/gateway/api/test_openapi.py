"""docs/openapi.json is generated from the app, current, and documents examples and errors."""

from __future__ import annotations

import json
from pathlib import Path

from musicsplit.gateway.api.openapi import render

DOC = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"


def test_committed_spec_is_current():
    assert DOC.exists(), "run: python -m musicsplit.gateway.api.openapi"
    assert DOC.read_text() == render(), "docs/openapi.json is stale: python -m musicsplit.gateway.api.openapi"


def _has_example(node, schemas) -> bool:
    if isinstance(node, dict):
        if "example" in node or "examples" in node:
            return True
        ref = node.get("$ref")
        if ref and _has_example(schemas[ref.rsplit("/", 1)[-1]], schemas):
            return True
        return any(_has_example(v, schemas) for k, v in node.items() if k != "$ref")
    if isinstance(node, list):
        return any(_has_example(v, schemas) for v in node)
    return False


def test_every_endpoint_has_examples_and_documented_errors():
    spec = json.loads(render())
    schemas = spec["components"]["schemas"]
    ops = [(m.upper(), p, op) for p, item in spec["paths"].items() for m, op in item.items()]
    assert len(ops) >= 13
    for method, path, op in ops:
        name = f"{method} {path}"
        assert op.get("summary"), name
        ok = [c for c, r in op["responses"].items() if c.startswith("2")]
        assert ok, name
        for code in ok:
            content = op["responses"][code].get("content", {})
            binary = [c for t, c in content.items() if c.get("schema", {}).get("format") == "binary"]
            if binary and len(binary) == len(content):  # a file download: its schema says so
                continue
            assert any(_has_example(c, schemas) for c in content.values()), f"{name} {code} has no example"
        assert "422" not in op["responses"], f"{name}: validation errors are 400 here"
        errors = [c for c in op["responses"] if c[0] in "45"]
        if path != "/v2/health/live":
            assert errors, f"{name} documents no error response"
        if not path.startswith("/v2/health/"):  # everything but the probes needs credentials
            assert op.get("security") == [{"bearer": []}], name
            assert {"401", "403", "429"} <= set(op["responses"]), f"{name}: 401/403/429"
            assert "WWW-Authenticate" in op["responses"]["401"]["headers"], name
        else:
            assert "security" not in op and "401" not in op["responses"], f"{name} is a probe: no credentials"
        for code in errors:
            content = op["responses"][code]["content"]["application/json"]
            assert "example" in content and content["example"]["code"], f"{name} {code} has no error example"
            if code in ("429", "503"):
                assert "Retry-After" in op["responses"][code].get("headers", {}), f"{name} {code}: Retry-After"
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "API key or OIDC JWT",
        "description": spec["components"]["securitySchemes"]["bearer"]["description"]}
    assert "/metrics" not in spec["paths"], "metrics are served on their own port"
    for path in ("/v1/separations", "/v1/separations/batch", "/v2/models/{name}/infer"):
        assert "413" in spec["paths"][path]["post"]["responses"], path
    upload = spec["paths"]["/v1/separations"]["post"]
    form = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    # The audio comes as `file`, or as the `upload_id` of a presigned upload: neither field alone is required.
    assert form["required"] == [] and form["properties"]["file"]["format"] == "binary"
    assert {"model", "stems", "output_format", "shifts", "callback_url", "upload_id"} <= set(form["properties"])
    assert "/v1/uploads" in spec["paths"] and "401" in spec["paths"]["/v1/uploads"]["post"]["responses"]
    listing = spec["paths"]["/v1/separations"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"status", "limit", "cursor", "user_id"}
