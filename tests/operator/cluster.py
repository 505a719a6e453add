"""A Kubernetes API on 127.0.0.1 for the operator's tests, and KServe's part.

- `CRDEmulator`: kmock's stateful `KubernetesEmulator` plus what a real API
  server does that the operator and `kubectl` rely on: CRDs register their
  resource when applied, custom resources are validated against the CRD's
  openAPIV3Schema (422 with the field and the reason; undeclared fields and
  bad formats refused as with kubectl's strict field validation; no defaults:
  tests/kube runs a real API server for those), server-side Tables
  from additionalPrinterColumns (`kubectl get sm`), list kinds, uid /
  creationTimestamp / generation, the status subresource split (status
  is ignored on create and on main-resource patches), and 422 for a JSON
  patch whose `test` fails.
- `Cluster`: the emulator served on 127.0.0.1 from a background thread, a
  kubeconfig pointing at it, and `kubectl` / operator processes.
- `KServeSimulator`: plays KServe's (and Knative's) controller, and the
  garbage collector: for each InferenceService, a new revision per storageUri,
  ready after a delay; traffic per canaryTrafficPercent; status as KServe
  writes it (components.predictor.traffic with latest/prev tags and URLs).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
import jsonpatch
import jsonschema
import kmock
import yaml
from kmock import KubernetesEmulator, ResourceInfo
from kmock._internal import enums
from kmock._internal.k8s import KubernetesError

from musicsplit.localstack import free_port, terminate
from tests.fixtures.polling import wait_value
from tests.kube.structural import closed

REPO = Path(__file__).resolve().parents[2]
CRD_RESOURCE = "apiextensions.k8s.io/v1/customresourcedefinitions"
ISVC = "serving.kserve.io/v1beta1/inferenceservices"
SM = "musicsplit.io/v1alpha1/separationmodels"
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens
# The project's shared data (../shared from its root; MUSICSPLIT_SHARED_DIR where it lies elsewhere).
SHARED = Path(os.environ.get("MUSICSPLIT_SHARED_DIR") or REPO.parent / "shared")
KSERVE_CRD = SHARED / "crds" / "kserve-v0.20.0" / "serving.kserve.io_inferenceservices.yaml"
KSERVE_VERSIONS = ("0.19", "0.20")
# v0.20's defaulting webhook writes the deployment modes' new names.
NEW_MODE_NAMES = {"RawDeployment": "Standard", "Serverless": "Knative"}
STANDARD = ("Standard", "RawDeployment")


def strict(schema: dict) -> dict:
    """`schema` refusing unknown fields where a real API server would prune
    them silently (every object with properties and no
    x-kubernetes-preserve-unknown-fields): a field the operator writes that
    KServe's CRD does not know is a bug, not a no-op."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(out.get(key), list):
            out[key] = [strict(s) for s in out[key]]
    return out


@functools.lru_cache(maxsize=None)
def _load_crd(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@functools.lru_cache(maxsize=None)
def kserve_crd(version: str = "0.20", strict_fields: bool = True) -> dict:
    """KServe v0.20.0's real InferenceService CRD; for "0.19" the same without
    what v0.20 added (spec.canary, status.canaryStatuses). Shared: never mutate it."""
    crd = copy.deepcopy(_load_crd(KSERVE_CRD))
    if version != "0.20":
        for v in crd["spec"]["versions"]:
            props = v["schema"]["openAPIV3Schema"]["properties"]
            props["spec"]["properties"].pop("canary", None)
            props["status"]["properties"].pop("canaryStatuses", None)
    if strict_fields:
        for v in crd["spec"]["versions"]:
            v["schema"]["openAPIV3Schema"]["properties"]["spec"] = strict(
                v["schema"]["openAPIV3Schema"]["properties"]["spec"])
    return crd


def _stored(value):
    """A list as the API server stores it: no null-valued keys in its items."""
    if isinstance(value, list):
        return [_stored(v) for v in value]
    if isinstance(value, dict):
        return {k: _stored(v) for k, v in value.items() if v is not None}
    return value


def _keep_nulls_outside_lists(patch, stored):
    """`stored`'s lists in `patch`, whose nulls outside lists (deletions) stay."""
    if isinstance(patch, dict):
        return {k: (None if v is None else _keep_nulls_outside_lists(v, stored.get(k))) for k, v in patch.items()}
    return stored if isinstance(patch, list) else patch


def merge_patch(base, patch):
    """RFC 7386 JSON merge patch, as the API server applies it (lists replaced
    whole, their items stored without null-valued keys)."""
    if isinstance(patch, list):
        return _stored(patch)
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(base) if isinstance(base, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _age(ts: str) -> str:
    s = int((datetime.now(timezone.utc) - datetime.fromisoformat(ts.replace("Z", "+00:00"))).total_seconds())
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def _jsonpath(obj: dict, path: str):
    cur = obj
    for part in path.strip(".").split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _field_errors(schema: dict, obj: dict) -> list[tuple[str, str]]:
    """Schema errors as (field, message), worded like the API server's."""
    out = []
    validator = jsonschema.Draft4Validator(closed(schema), format_checker=jsonschema.FormatChecker())
    for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path).lstrip(".")
        if e.validator == "required":
            missing = e.message.split("'")[1]
            out.append((f"{path + '.' if path else ''}{missing}", "Required value"))
        elif e.validator == "additionalProperties":
            extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
            out.extend((f"{path + '.' if path else ''}{x}", "field not declared in schema") for x in extra)
        elif e.validator == "enum":
            opts = ", ".join(f'"{o}"' for o in e.validator_value)
            out.append((path, f"Unsupported value: {json.dumps(e.instance)}: supported values: {opts}"))
        elif e.validator == "pattern":
            out.append((path, f"Invalid value: {json.dumps(e.instance)}: {path} in body should match "
                              f"'{e.validator_value}'"))
        elif e.validator in ("minimum", "maximum"):
            word = "greater than or equal to" if e.validator == "minimum" else "less than or equal to"
            out.append((path, f"Invalid value: {e.instance}: {path} in body should be {word} {e.validator_value}"))
        elif e.validator == "type":
            out.append((path, f'Invalid value: "{type(e.instance).__name__}": {path} in body must be of type '
                              f"{e.validator_value}: {json.dumps(e.instance)}"))
        else:
            out.append((path, f"Invalid value: {json.dumps(e.instance)[:80]}: {e.message}"))
    return out


def _invalid(kind: str, group: str, name: str, errors: list[tuple[str, str]]) -> KubernetesError:
    text = [f"{f}: {m}" for f, m in errors]
    return KubernetesError(
        status=422, reason="Invalid",
        message=f'{kind}.{group} "{name}" is invalid: ' + (text[0] if len(text) == 1 else "[" + ", ".join(text) + "]"),
        details={"name": name, "group": group, "kind": kind,
                 "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in errors]},
    )


class CRDEmulator(KubernetesEmulator):
    """See the module docstring."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.crds: dict[str, dict] = {}  # resource key 'group/version/plural' -> CRD version entry + names
        self.kserve_defaulting = False  # v0.20's webhook: deploymentMode annotations in the new names
        # What no real server can be made to do on demand: (resource key[/subresource], name) -> (status,
        # reason, message), answered to every create or patch of that object; and when each refused request came.
        self.refuse: dict[tuple[str, str], tuple[int, str, str]] = {}
        # The same for reads (GET of one object), e.g. a 503 while etcd is away.
        self.refuse_reads: dict[tuple[str, str], tuple[int, str, str]] = {}
        self.refused: list[tuple[float, str]] = []
        # OpenAPI v3 that says "PATCH takes fieldValidation": kubectl then leaves
        # validation to the server (us) instead of downloading schemas itself.
        self.fallback["get /openapi/v3"] << self._serve_openapi_root
        self.fallback["get", re.compile(r"/openapi/v3/.+")] << self._serve_openapi_gv

    def _group_versions(self) -> set[str]:
        return {(f"apis/{r.group}/{r.version}" if r.group else f"api/{r.version}") for r in self._get_resources()}

    async def _serve_version(self, request):
        # Subresources have no short names or categories of their own (kubectl warns otherwise).
        out = await super()._serve_version(request)
        # The core group is "v1", not "/v1": kubectl maps kinds (a ConfigMap in `create -f`) by it.
        out["groupVersion"] = out.get("groupVersion", "").lstrip("/")
        for r in out["resources"]:
            if "/" in r["name"]:
                r["shortNames"], r["categories"] = [], []
        return out

    async def _serve_openapi_root(self, request):
        return {"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash=0"} for gv in self._group_versions()}}

    async def _serve_openapi_gv(self, request):
        gv = request.url.path.removeprefix("/openapi/v3/")
        group, version = (gv.split("/")[1:3] if gv.startswith("apis/") else ("", gv.split("/")[1]))
        paths, schemas = {}, {}
        for key, crd in self.crds.items():
            # Served for KServe only: what the operator reads to tell v0.20 from older ones.
            if crd["group"] == "serving.kserve.io" and key.startswith(f"{group}/{version}/"):
                kind = crd["names"]["kind"]
                schemas[f"io.kserve.serving.{version}.{kind}"] = {
                    **crd["version"]["schema"]["openAPIV3Schema"],
                    "x-kubernetes-group-version-kind": [{"group": group, "version": version, "kind": kind}]}
        for res in self._get_resources():
            if (res.group, res.version) != (group, version) or res not in self.resources:
                continue
            info = self.resources[res]
            kind = info.kind or res.plural.capitalize()
            prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
            ns = "/namespaces/{namespace}" if info.namespaced else ""
            paths[f"{prefix}{ns}/{res.plural}/{{name}}"] = {"patch": {
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                "requestBody": {"content": {"application/merge-patch+json": {"schema": {"type": "object"}}}},
                "responses": {"200": {"description": "OK"}},
            }}
        return {"openapi": "3.0.0", "info": {"title": "kmock", "version": "v1"}, "paths": paths,
                "components": {"schemas": schemas}}

    def _info(self, request):
        key = f"{request.resource.group}/{request.resource.version}/{request.resource.plural}".lstrip("/")
        return key, self.crds.get(key)

    def _register_crd(self, crd: dict) -> None:
        spec = crd["spec"]
        names = spec["names"]
        for v in spec["versions"]:
            key = f"{spec['group']}/{v['name']}/{names['plural']}"
            self.resources[key] = ResourceInfo(
                kind=names["kind"], singular=names.get("singular"), namespaced=spec["scope"] == "Namespaced",
                verbs={"get", "list", "watch", "create", "patch", "delete"}, shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])), subresources=set((v.get("subresources") or {}).keys()))
            self.crds[key] = {"group": spec["group"], "names": names, "version": v}

    async def _handle(self, request):
        if request.resource is not None and request.action == enums.action.FETCH and request.name:
            key = f"{request.resource.group}/{request.resource.version}/{request.resource.plural}".lstrip("/")
            refusal = self.refuse_reads.get((key, request.name))
            if refusal is not None:
                raise KubernetesError(status=refusal[0], reason=refusal[1], message=refusal[2])
        if request.resource is not None and request.action in (enums.action.CREATE, enums.action.UPDATE):
            key = f"{request.resource.group}/{request.resource.version}/{request.resource.plural}".lstrip("/")
            data = request.data if isinstance(request.data, dict) else {}
            name = request.name or (data.get("metadata") or {}).get("name")
            if request.subresource:
                key = f"{key}/{request.subresource}"
            refusal = self.refuse.get((key, name))
            if refusal is not None:
                self.refused.append((time.monotonic(), request.action.name))
                raise KubernetesError(status=refusal[0], reason=refusal[1], message=refusal[2])
        if request.resource is not None:
            self._default_kserve(request)
            self._admit(request)
        return await super()._handle(request)

    def _default_kserve(self, request) -> None:
        """KServe v0.20's defaulting webhook renames the deployment mode annotation."""
        if not self.kserve_defaulting or not isinstance(request.data, dict) or request.subresource:
            return
        if f"{request.resource.group}/{request.resource.version}/{request.resource.plural}" != ISVC:
            return
        ann = (request.data.get("metadata") or {}).get("annotations") or {}
        mode = ann.get("serving.kserve.io/deploymentMode")
        if mode in NEW_MODE_NAMES:
            ann["serving.kserve.io/deploymentMode"] = NEW_MODE_NAMES[mode]

    def _admit(self, request) -> None:
        """What the API server does before storing: defaults, validation, status split."""
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        key, crd = self._info(request)
        if request.action == enums.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now)
            meta["generation"] = 1
            meta["resourceVersion"] = str(time.monotonic_ns())
            if request.namespace and "namespace" not in meta and (crd is None or
                                                                  self.resources[key].namespaced):
                meta["namespace"] = request.namespace
            if key == CRD_RESOURCE:
                self._register_crd(request.data)
            if crd is not None:
                if "status" in (crd["version"].get("subresources") or {}):
                    request.data.pop("status", None)
                self._validate(crd, request.data)
        elif request.action == enums.action.UPDATE and isinstance(request.data, list):
            # A JSON patch whose `test` op fails is 422 on a real API server
            # (kopf then tries again with a fresher body); kmock answers 500.
            try:
                current = self.objects[request.resource, request.namespace, request.name]
            except KeyError:
                return
            if current.deleted:
                return
            tests = [op for op in request.data if isinstance(op, dict) and op.get("op") == "test"]
            try:
                jsonpatch.JsonPatch(tests).apply(json.loads(json.dumps(dict(current.raw))))
            except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPointerException) as e:
                raise KubernetesError(status=422, reason="Invalid", message=f"the test operation failed: {e}") from e
        elif request.action == enums.action.UPDATE and isinstance(request.data, dict):
            try:
                current = self.objects[request.resource, request.namespace, request.name]
            except KeyError:
                return
            if current.deleted:
                return
            current = dict(current.raw)
            patch = request.data
            for k, v in _stored(patch).items():  # stored as a real server stores them
                if isinstance(v, (list, dict)):
                    patch[k] = _keep_nulls_outside_lists(patch[k], v)
            meta = patch.setdefault("metadata", {}) if request.subresource != "status" else None
            if crd is not None and "status" in (crd["version"].get("subresources") or {}):
                if request.subresource == "status":
                    for k in list(patch):
                        if k != "status":
                            patch.pop(k)
                else:
                    patch.pop("status", None)
            merged = merge_patch(current, patch)
            if crd is not None and request.subresource != "status":
                self._validate(crd, merged)
            if meta is not None and merged.get("spec") != current.get("spec"):
                meta["generation"] = int(current.get("metadata", {}).get("generation") or 1) + 1
            patch.setdefault("metadata", {})["resourceVersion"] = str(time.monotonic_ns())

    def _validate(self, crd: dict, obj: dict) -> None:
        schema = ((crd["version"].get("schema") or {}).get("openAPIV3Schema")) or {}
        body = {k: v for k, v in obj.items() if k != "status"}
        errors = _field_errors(schema, body)
        if errors:
            raise _invalid(crd["names"]["kind"], crd["group"], obj.get("metadata", {}).get("name", ""), errors)

    # -- reads: list kinds and server-side Tables

    def _wants_table(self, request) -> bool:
        accept = next((v for k, v in request.headers.items() if k.lower() == "accept"), "")
        return "as=Table" in accept

    def _table(self, request, items: list[dict]) -> dict:
        key, crd = self._info(request)
        cols = [{"name": "Name", "type": "string", "format": "name", "description": "name", "priority": 0}]
        paths = []
        printer = (crd or {}).get("version", {}).get("additionalPrinterColumns") or [
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
        for c in printer:
            cols.append({"name": c["name"], "type": "string" if c["type"] == "date" else c["type"],
                         "format": "", "description": c.get("description", ""), "priority": c.get("priority", 0)})
            paths.append(c)
        rows = []
        for obj in items:
            cells = [obj.get("metadata", {}).get("name")]
            for c in paths:
                v = _jsonpath(obj, c["jsonPath"])
                # A missing value is a null cell (kubectl prints nothing), as from a real API server.
                cells.append(_age(v) if c["type"] == "date" and v is not None else v)
            rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                    "metadata": obj.get("metadata", {})}})
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "1"},
                "columnDefinitions": cols, "rows": rows}

    async def _serve_list(self, request):
        result = await super()._serve_list(request)
        # fieldSelector a.b=c[,d=e] (kubectl describe finds a resource's Events with it)
        for cond in filter(None, (request.params.get("fieldSelector") or "").split(",")):
            path, _, want = cond.partition("=")
            result["items"] = [i for i in result["items"] if str(_jsonpath(i, path) or "") == want]
        if self._wants_table(request):
            return self._table(request, result["items"])
        info = self.resources.get(request.resource) if request.resource in self.resources else None
        kind = (info.kind if info and info.kind else (request.resource.plural or "").capitalize())
        group = request.resource.group
        result["apiVersion"] = f"{group}/{request.resource.version}" if group else request.resource.version
        result["kind"] = f"{kind}List"
        return result

    async def _serve_fetch(self, request):
        obj = await super()._serve_fetch(request)
        return self._table(request, [obj]) if self._wants_table(request) else obj


class Cluster:
    """The emulator on 127.0.0.1 in a background thread, with a kubeconfig."""

    def __init__(self, workdir: Path, kserve: str = "0.19"):
        """`kserve`: which KServe's InferenceService CRD and webhook to play ("0.19" or "0.20")."""
        self.workdir = Path(workdir)
        self.kserve = kserve
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="kmock")
        self.emu: CRDEmulator | None = None
        self.url = ""
        self.sm_resource = kmock.resource(SM)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with CRDEmulator() as emu, kmock.Server(emu) as server:
            emu.resources.load_bundled()
            # KServe's real CRD (its own chart installs it): InferenceServices are
            # validated against its schema; KServe's controller is simulated.
            emu._register_crd(kserve_crd(self.kserve))
            emu.kserve_defaulting = self.kserve == "0.20"
            self.emu, self.url = emu, str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> "Cluster":
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("kmock did not start")
        self.kubeconfig = self.workdir / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": "default"}}],
            "users": [{"name": "kmock", "user": {"token": "test"}}],
        }))
        return self

    def __exit__(self, *exc) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    # -- clients

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=5.0)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["kubectl", "--kubeconfig", str(self.kubeconfig), *args]
        p = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def apply(self, docs: list[dict] | dict, check: bool = True) -> subprocess.CompletedProcess:
        docs = docs if isinstance(docs, list) else [docs]
        return self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs), check=check)

    def get(self, resource: str, name: str, namespace: str = "default") -> dict | None:
        try:
            obj = self.emu.objects[kmock.resource(resource), namespace, name]
        except KeyError:
            return None
        return None if obj.deleted else json.loads(json.dumps(dict(obj.raw)))

    def events(self, namespace: str = "default") -> list[dict]:
        out = []
        for (res, ns, _), obj in list(self.emu.objects.items()):
            if res == kmock.resource("v1/events") and ns == namespace and not obj.deleted:
                out.append(dict(obj.raw))
        return out

    def wait(self, what, timeout: float = 30.0, interval: float = 0.2, message: str = ""):
        """`what()` once truthy (wait_until), a lookup into an object not there yet counting
        as not yet; AssertionError with the last value after `timeout` seconds."""
        return wait_value(what, timeout, message, interval)


OPERATOR_AGENTS = ("kopf", "OpenAPI-Generator")  # kopf and the kubernetes client: the operator's


def operator_requests(cluster: Cluster, since: int = 0, agents: tuple[str, ...] = OPERATOR_AGENTS) -> list:
    """The emulator's requests from index `since` on made by a client whose User-Agent
    starts with one of `agents` (by default the operator's; not kubectl's, not the
    simulator's). `len(cluster.emu._requests)` is the index to pass for "from now on"."""
    out = []
    for req in list(cluster.emu._requests)[since:]:
        ua = next((v for k, v in req.headers.items() if k.lower() == "user-agent"), "")
        if ua.startswith(agents):
            out.append(req)
    return out


def operator_api_calls(cluster: Cluster, agents: tuple[str, ...] = OPERATOR_AGENTS) -> set[tuple[str, str, str]]:
    """(apiGroup, resource[/subresource], verb) of every call the operator made
    (operator_requests)."""
    verbs = {"WATCH": "watch", "LIST": "list", "FETCH": "get", "CREATE": "create", "UPDATE": "patch",
             "DELETE": "delete"}
    used = set()
    for req in operator_requests(cluster, agents=agents):
        if req.resource is None:
            continue
        if not req.resource.plural or req.action is None:
            continue  # discovery (/api, /apis/<group>...): open to every authenticated user
        res = req.resource.plural + (f"/{req.subresource}" if req.subresource else "")
        used.add((req.resource.group, res, verbs[req.action.name]))
    return used


def rbac_grants(path: Path) -> set[tuple[str, str, str]]:
    role = next(d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "ClusterRole")
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


class Operator:
    """`musicsplit serve operator` as a process against the cluster."""

    def __init__(self, cluster: Cluster, log: Path, tick: float = 0.5, env: dict | None = None,
                 args: list[str] = (), standalone: bool = True, namespace: str | None = "default"):
        self.log_path = log
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        full = {"MUSICSPLIT_OPERATOR_METRICS_PORT": str(self.metrics_port),
                "MUSICSPLIT_OPERATOR_METRICS_ADDRESS": "127.0.0.1",**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "MUSICSPLIT_OPERATOR_TICK_SECONDS": str(tick),
                "MUSICSPLIT_OPERATOR_PROMETHEUS_TIMEOUT_SECONDS": "2", "PYTHONUNBUFFERED": "1",
                # Nothing listens there: analyses hold unless a test gives a real Prometheus.
                "MUSICSPLIT_OPERATOR_PROMETHEUS_URL": UNREACHABLE,
                **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "musicsplit.cli", "serve", "operator", "--liveness", "",
             *(["-n", namespace] if namespace else ["-A"]),
             *(["--standalone"] if standalone else []), *args],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=full, cwd=REPO, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        terminate(self.proc, timeout=15)


def _storage_uri(pred: dict) -> str | None:
    return (pred.get("model") or {}).get("storageUri") or next(
        (e["value"] for c in pred.get("containers") or [] for e in c.get("env") or [] if e["name"] == "STORAGE_URI"),
        None)


def _deployment_condition(dep: dict, broken: bool) -> dict:
    """PredictorReady as KServe derives it from a Deployment's conditions."""
    if dep["ready"]:
        return {"status": "True", "reason": "NewReplicaSetAvailable",
                "message": f"ReplicaSet for {dep['uri']} has successfully progressed."}
    if broken:
        return {"status": "False", "reason": "ProgressDeadlineExceeded",
                "message": f"ReplicaSet for {dep['uri']} has timed out progressing."}
    return {"status": "Unknown", "reason": "ReplicaSetUpdated", "message": f"ReplicaSet for {dep['uri']} is progressing."}


class KServeSimulator:
    """KServe's controller, Knative's revisions and the garbage collector, honestly small.

    `endpoints` maps storageUri -> URL of a process serving it (end-to-end
    tests); other URIs get placeholder URLs. `ready_after` is how long a new
    revision takes to become ready; URIs in `broken` never do (RevisionFailed).
    """

    def __init__(self, cluster: Cluster, *, endpoints: dict[str, str] | None = None, ready_after: float = 0.3,
                 broken: set[str] = frozenset(), period: float = 0.1):
        self.cluster, self.endpoints, self.ready_after, self.broken = cluster, endpoints or {}, ready_after, broken
        self.period = period
        self.revisions: dict[tuple, list[dict]] = {}  # (ns, name) -> [{name, uri, created}]
        # RawDeployment reports no revisions in status: what the Deployment serves is kept here.
        self.raw_rolled: dict[tuple, str | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="kserve-sim")
        self.http = cluster.client()
        self.split: dict[tuple, dict[str, float]] = {}  # (ns, name) -> {url: fraction} (what Knative routes)
        # v0.20 Standard mode: (ns, name) -> {Deployment name: {uri, created, ready, serving}}
        self.deployments: dict[tuple, dict[str, dict]] = {}
        self.kserve = cluster.kserve

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.http.close()

    def _loop(self):
        while not self._stop.is_set():
            try:
                self.step()
            except httpx.HTTPError:
                pass
            self._stop.wait(self.period)

    def step(self):
        r = self.http.get("/apis/serving.kserve.io/v1beta1/inferenceservices")
        if r.status_code != 200:
            return
        owners = {o["metadata"]["uid"] for o in self._list("/apis/musicsplit.io/v1alpha1/separationmodels")}
        for isvc in r.json().get("items", []):
            meta = isvc["metadata"]
            refs = meta.get("ownerReferences") or []
            if refs and not any(ref["uid"] in owners for ref in refs):
                # The garbage collector: the owner is gone, so is its InferenceService.
                self.http.delete(f"/apis/serving.kserve.io/v1beta1/namespaces/{meta['namespace']}"
                                 f"/inferenceservices/{meta['name']}")
                self.revisions.pop((meta["namespace"], meta["name"]), None)
                self.raw_rolled.pop((meta["namespace"], meta["name"]), None)
                self.deployments.pop((meta["namespace"], meta["name"]), None)
                continue
            # Without the nulls a merge patch deletes: what a real server then stores.
            status = _without_nulls(self.reconcile(isvc))
            if status != isvc.get("status"):
                self.http.patch(
                    f"/apis/serving.kserve.io/v1beta1/namespaces/{meta['namespace']}/inferenceservices/"
                    f"{meta['name']}/status", json={"status": status},
                    headers={"Content-Type": "application/merge-patch+json"})

    def _list(self, path):
        r = self.http.get(path)
        return r.json().get("items", []) if r.status_code == 200 else []

    def reconcile(self, isvc: dict) -> dict:
        meta, pred = isvc["metadata"], isvc["spec"]["predictor"]
        key = (meta["namespace"], meta["name"])
        mode = (meta.get("annotations") or {}).get("serving.kserve.io/deploymentMode")
        if self.kserve == "0.20" and mode in STANDARD:
            return self._standard(isvc)
        uri = _storage_uri(pred)
        revs = self.revisions.setdefault(key, [])
        now = time.monotonic()
        # A spec change that moves the storageUri creates a new revision (Knative).
        if not revs or revs[-1]["uri"] != uri:
            revs.append({"name": f"{meta['name']}-predictor-{len(revs) + 1:05d}", "uri": uri, "created": now,
                         "ready": False})
        for rev in revs:
            if not rev["ready"] and rev["uri"] not in self.broken and now - rev["created"] >= self.ready_after:
                rev["ready"] = True
        old = isvc.get("status") or {}
        comp_old = (old.get("components") or {}).get("predictor") or {}
        latest = revs[-1]
        # RawDeployment: a Deployment per model, no revisions to split between (kserve#4074).
        raw = mode in STANDARD
        rolled = self.raw_rolled.get(key) if raw else comp_old.get("latestRolledoutRevision")
        pct = pred.get("canaryTrafficPercent")
        if raw:
            pct = None
        host = f"{meta['name']}-predictor.{meta['namespace']}.example.com"
        by_name = {r["name"]: r for r in revs}

        def url(rev, tag):
            return self.endpoints.get(rev["uri"], f"http://{tag}-{host}")

        traffic = []
        prev_rolled = comp_old.get("previousRolledoutRevision")
        if not latest["ready"]:
            # Knative keeps routing to what it routed before.
            serving = by_name.get(rolled) if rolled else None
            if serving:
                traffic.append({"revisionName": serving["name"], "percent": 100, "latestRevision": False,
                                "tag": "prev", "url": url(serving, "prev")})
        elif pct is None or rolled is None or rolled == latest["name"]:
            if rolled != latest["name"]:
                prev_rolled, rolled = rolled, latest["name"]
            traffic.append({"revisionName": latest["name"], "percent": 100, "latestRevision": True, "tag": "latest",
                            "url": url(latest, "latest")})
        else:
            stable = by_name[rolled]
            traffic.append({"revisionName": latest["name"], "percent": pct, "latestRevision": True,
                            "tag": "latest", "url": url(latest, "latest")})
            traffic.append({"revisionName": stable["name"], "percent": 100 - pct, "latestRevision": False,
                            "tag": "prev", "url": url(stable, "prev")})
        self.split[key] = {t["url"]: t["percent"] / 100 for t in traffic}
        if raw:  # no Knative routes: no tags, no per-revision URLs
            traffic = [{k: v for k, v in t.items() if k not in ("tag", "url")} for t in traffic]
        any_ready = bool(traffic)
        if raw:
            self.raw_rolled[key] = rolled
            serving = by_name.get(rolled)
            return self._raw_status(isvc, latest, serving, url(serving, "latest") if serving else None, len(revs))
        cond = [{"type": "Ready", "status": "True" if any_ready else "False"},
                {"type": "PredictorReady", "status": "True" if latest["ready"] else "False",
                 **({"reason": "RevisionFailed", "message": f"revision {latest['name']} failed: {latest['uri']} "
                                                            "could not be loaded"}
                    if latest["uri"] in self.broken else {})}]
        return {
            "url": f"http://{host}",
            **({"deploymentMode": "Knative"} if self.kserve == "0.20" else {}),
            "conditions": cond,
            "components": {"predictor": {
                "latestCreatedRevision": latest["name"],
                "latestReadyRevision": next((r["name"] for r in reversed(revs) if r["ready"]), None),
                "latestRolledoutRevision": rolled,
                "previousRolledoutRevision": prev_rolled,
                "traffic": traffic,
            }},
        }

    def _raw_status(self, isvc: dict, latest: dict, serving: dict | None, serving_url: str | None,
                    deployment_generation: int) -> dict:
        """What KServe's PropagateRawStatus reports: no revisions, only PredictorReady
        from the Deployment's conditions (Unknown while the new ReplicaSet rolls out,
        False once it cannot), the URL once ready, and the Deployment's (not the
        InferenceService's) observedGeneration."""
        broken = latest["uri"] in self.broken
        if latest["ready"]:
            pred = {"status": "True", "reason": "NewReplicaSetAvailable",
                    "message": f"ReplicaSet for {latest['uri']} has successfully progressed."}
        elif broken and serving:  # old pods keep serving; the rollout gives up at its deadline
            pred = {"status": "False", "reason": "ProgressDeadlineExceeded",
                    "message": f"ReplicaSet for {latest['uri']} has timed out progressing."}
        elif broken:
            pred = {"status": "False", "reason": "MinimumReplicasUnavailable",
                    "message": "Deployment does not have minimum availability."}
        else:
            pred = {"status": "Unknown", "reason": "ReplicaSetUpdated",
                    "message": f"ReplicaSet for {latest['uri']} is progressing."}
        # Ready = PredictorReady and IngressReady (KServe's living condition set).
        cond = [{"type": "IngressReady", "status": "True"}, {"type": "PredictorReady", **pred},
                {"type": "Ready", **pred}]
        status = {
            "conditions": cond,
            "deploymentMode": "Standard" if self.kserve == "0.20" else "RawDeployment",
            "observedGeneration": deployment_generation,
            # KServe sets the component URL once ready and never clears it.
            "components": {"predictor": {"url": serving_url} if serving_url else {}},
            "modelStatus": {"transitionStatus": "UpToDate" if latest["ready"] else "InProgress"},
        }
        if serving_url:
            status["url"] = serving_url
        last_failure = ((isvc.get("status") or {}).get("modelStatus") or {}).get("lastFailureInfo")
        if broken:
            status["modelStatus"] = {"transitionStatus": "BlockedByFailedLoad", "lastFailureInfo": {
                "reason": "ModelLoadFailed", "message": f"{latest['uri']} could not be loaded"}}
        elif last_failure:  # KServe never clears it
            status["modelStatus"]["lastFailureInfo"] = last_failure
        return status

    def _standard(self, isvc: dict) -> dict:
        """KServe v0.20's Standard mode: a Deployment and Service per predictor
        (<isvc>-predictor, or <isvc>-<name>-predictor when named), one more per
        spec.canary entry, weighted on the HTTPRoute; status.canaryStatuses and
        CanaryPredictorReady for the canaries. A Deployment whose storageUri
        changes rolls (its old pods serve until the new ones are ready)."""
        meta, spec = isvc["metadata"], isvc["spec"]
        ns, name = meta["namespace"], meta["name"]
        deps = self.deployments.setdefault((ns, name), {})
        now = time.monotonic()

        def deployment(pred: dict) -> tuple[str, dict]:
            dep = f"{name}-{pred['name']}-predictor" if pred.get("name") else f"{name}-predictor"
            uri, d = _storage_uri(pred), deps.get(dep)
            if d is None or d["uri"] != uri:
                d = deps[dep] = {"uri": uri, "created": now, "ready": False,
                                 "serving": d["uri"] if d and d["ready"] else (d or {}).get("serving")}
            if not d["ready"] and uri not in self.broken and now - d["created"] >= self.ready_after:
                d.update(ready=True, serving=uri)
            return dep, d

        stable_name, stable = deployment(spec["predictor"])
        canaries = [(c, *deployment(c.get("predictor") or {})) for c in spec.get("canary") or []]
        for dep in set(deps) - {stable_name, *(c[1] for c in canaries)}:
            del deps[dep]  # predictors gone from the spec: their Deployments are deleted

        def url(dep: str, d: dict) -> str | None:
            return self.endpoints.get(d["serving"], f"http://{dep}.{ns}.svc.cluster.local") if d["serving"] else None

        split = {}
        canary_pct = sum(c["trafficPercent"] for c, _, d in canaries if d["ready"])
        if url(stable_name, stable):
            split[url(stable_name, stable)] = (100 - canary_pct) / 100
        for c, dep, d in canaries:
            if d["ready"]:
                split[url(dep, d)] = c["trafficPercent"] / 100
        self.split[(ns, name)] = split
        pred = _deployment_condition(stable, stable["uri"] in self.broken)
        cond = [{"type": "IngressReady", "status": "True"}, {"type": "PredictorReady", **pred},
                {"type": "Ready", **pred}]
        status = {"conditions": cond, "deploymentMode": "Standard", "observedGeneration": 1,
                  "components": {"predictor": {"url": url(stable_name, stable)} if stable["serving"] else {}},
                  "modelStatus": {"transitionStatus": "UpToDate" if stable["ready"] else "InProgress"}}
        if stable["serving"]:
            status["url"] = url(stable_name, stable)
        if canaries:
            statuses = []
            for c, dep, d in canaries:
                entry = {"name": c["predictor"].get("name", ""), "ready": d["ready"],
                         "trafficPercent": c["trafficPercent"] if d["ready"] else 0,
                         "modelStatus": {"transitionStatus": "UpToDate" if d["ready"] else "InProgress"}}
                if d["uri"] in self.broken:
                    entry["modelStatus"] = {"transitionStatus": "BlockedByFailedLoad", "lastFailureInfo": {
                        "reason": "ModelLoadFailed", "message": f"{d['uri']} could not be loaded"}}
                statuses.append(entry)
            status["canaryStatuses"] = statuses
            ok = all(s["ready"] for s in statuses)
            cond.append({"type": "CanaryPredictorReady", "status": "True" if ok else "False",
                         "reason": "AllCanariesReady" if ok else "CanaryNotReady"})
        return status
