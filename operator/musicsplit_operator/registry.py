"""The model registry (MLflow): which release `mlflow://models/...` names.

A SeparationModel's `spec.model.storageUri` may name a registered model
version instead of a storage location:

- `mlflow://models/NAME/VERSION`: that version (MLflow's integer);
- `mlflow://models/NAME@ALIAS`: the version the alias points at;
- `mlflow://models/NAME/STAGE`: the latest version in that stage
  (Staging, Production, Archived, None) while MLflow still has stages.

The operator resolves it with MLflow's client, against
`MUSICSPLIT_OPERATOR_MLFLOW_TRACKING_URI`: the model version's download URI
becomes the storageUri KServe fetches, and its tag `musicsplit.version` the
release version (`spec.model.version`, the `model_version` label, the
musicsplit.yaml version the predictor checks). MLflow's integer version
numbers a registered model's entries; the release version names what is in
the model dir, so a version without that tag takes `spec.model.version`, and
one with neither is refused.

It resolves once per `spec.model` (or on the annotation
musicsplit.io/action=resolve) and keeps the result in `status.registry`: an
alias that moves mid-rollout, or an operator restarted then, never swaps the
release being judged. A registry that cannot be asked holds with a reason.
What happens to a release is written back by `reporting.py`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime

from .spec import REGISTRY_SCHEME, ModelRef
from .status import iso, parse_time

log = logging.getLogger(__name__)

# Condition RegistryResolved reasons
RESOLVED, UNREACHABLE, ERROR, NOT_CONFIGURED = "Resolved", "RegistryUnreachable", "RegistryError", \
    "RegistryNotConfigured"
VERSION_TAG = "musicsplit.version"
STAGES = {"none": "None", "staging": "Staging", "production": "Production", "archived": "Archived"}
# Storage KServe's storage initializer fetches; MLflow's own proxies (mlflow-artifacts:,
# runs:, models:, dbfs:) it cannot.
FETCHABLE = re.compile(r"^(gs|s3|pvc|https?|hf|oci|azure|file)://.+")
_NAME = r"[^/@]+"
_URI = re.compile(rf"^mlflow://models/(?P<name>{_NAME})(?:/(?P<ref>[^/@]+)|@(?P<alias>[^/@]+))$")


class RegistryError(Exception):
    """The reference could not be resolved; the message is for status, `reason` for the condition."""

    def __init__(self, message: str, reason: str = ERROR):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RegistryRef:
    uri: str
    name: str
    version: str | None = None
    alias: str | None = None
    stage: str | None = None

    def __str__(self) -> str:
        return f"{self.name} " + (f"version {self.version}" if self.version else f"@{self.alias}" if self.alias
                                  else f"stage {self.stage}")


def parse_uri(uri: str) -> RegistryRef:
    m = _URI.match(uri or "")
    if not m:
        raise RegistryError(f"{uri} is not mlflow://models/NAME/VERSION, mlflow://models/NAME@ALIAS or "
                            "mlflow://models/NAME/STAGE")
    name, ref, alias = m.group("name"), m.group("ref"), m.group("alias")
    if alias:
        return RegistryRef(uri, name, alias=alias)
    if ref.isdigit():
        return RegistryRef(uri, name, version=ref)
    if ref.lower() in STAGES:
        return RegistryRef(uri, name, stage=STAGES[ref.lower()])
    raise RegistryError(f"{uri}: {ref!r} is neither a version number nor a stage ({', '.join(STAGES.values())})")


def preload() -> None:
    """Import MLflow now (seconds: it imports half of PyPI), at the operator's
    start rather than inside the first tick that resolves an mlflow:// model."""
    import mlflow  # noqa: F401


def client(tracking_uri: str, timeout_s: float):
    """MLflow's client, failing fast: its default retries an unreachable server for minutes."""
    # MLflow reads these per request, from the environment only.
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(int(timeout_s), 1))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def registry_failure(exc: Exception, what: str) -> RegistryError:
    """An MLflow client error as a hold reason: its own refusals are the
    reference's fault; anything else means the server could not be asked."""
    code = getattr(exc, "error_code", None)
    text = " ".join(str(getattr(exc, "message", exc)).split())
    if code and code != "INTERNAL_ERROR" and not text.startswith("API request to"):
        return RegistryError(f"{what}: MLflow says {code}: {text[:200]}", ERROR)
    return RegistryError(f"{what}: MLflow could not be asked ({type(exc).__name__}: {text[:160]})", UNREACHABLE)


def resolve(mlflow, ref: RegistryRef, expected_version: str | None) -> dict:
    """The registry's answer for `ref`: {modelName, modelVersion, version, storageUri}."""
    try:
        if ref.alias:
            mv = mlflow.get_model_version_by_alias(ref.name, ref.alias)
        elif ref.version:
            mv = mlflow.get_model_version(ref.name, ref.version)
        else:
            found = mlflow.get_latest_versions(ref.name, stages=[ref.stage])
            if not found:
                raise RegistryError(f"{ref.uri}: no version of {ref.name} is in stage {ref.stage}")
            mv = found[0]
        download = mlflow.get_model_version_download_uri(ref.name, mv.version)
    except RegistryError:
        raise
    except Exception as e:  # noqa: BLE001 - MlflowException, requests' errors: classified for the hold
        raise registry_failure(e, f"resolving {ref.uri}") from None
    if not FETCHABLE.match(download or ""):
        raise RegistryError(f"{ref} is stored at {download}, which KServe's storage initializer cannot fetch: "
                            "give the MLflow server a direct artifact store (s3://, gs://, ...) and "
                            "--no-serve-artifacts, or name the storage URI in spec.model.storageUri")
    tagged = (mv.tags or {}).get(VERSION_TAG)
    if tagged and expected_version and tagged != expected_version:
        raise RegistryError(f"{ref} is release {tagged} (tag {VERSION_TAG}), but spec.model.version says "
                            f"{expected_version}")
    version = tagged or expected_version
    if not version:
        raise RegistryError(f"{ref} has no tag {VERSION_TAG}: tag the model version with the version in its "
                            "musicsplit.yaml, or set spec.model.version")
    return {"modelName": ref.name, "modelVersion": str(mv.version), "version": version, "storageUri": download}


# ---------------------------------------------------------------- per tick


def spec_key(model: ModelRef) -> str:
    """What the resolution depends on: spec.model, nothing else in the spec."""
    body = json.dumps(model.model_dump(by_alias=True), sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Resolution:
    model: ModelRef | None  # the release to roll out; None: nothing resolved yet
    status: dict  # status.registry
    ok: bool
    reason: str
    message: str


def resolve_for_tick(model: ModelRef, old: dict | None, now: datetime, *, generation: int | None,
                     tracking_uri: str | None, timeout_s: float, retry_s: float, force: bool = False,
                     connect=client) -> Resolution:
    """The release `model` (an mlflow:// reference) names. Resolved only when
    spec.model changed since the last resolution, a failed attempt is
    `retry_s` old, or `force`; else what status.registry says. While the
    current reference cannot be resolved, the last resolution stays in use
    (an in-flight rollout goes on; nothing new starts)."""
    old = dict(old or {})
    key = spec_key(model)
    if old.get("specKey") == key and old.get("storageUri") and not force:
        return _use(model, _without_error(old), RESOLVED, _said(old))
    last_try = parse_time(old.get("attemptedAt")) if old.get("errorSpecKey") == key else None
    if last_try and not force and (now - last_try).total_seconds() < retry_s:
        return _use(model, old, old.get("reason", ERROR), old.get("error", ""))
    try:
        if not tracking_uri:
            raise RegistryError(f"{model.storage_uri} names MLflow, but this operator has no registry "
                                "(MUSICSPLIT_OPERATOR_MLFLOW_TRACKING_URI)", NOT_CONFIGURED)
        ref = parse_uri(model.storage_uri)
        found = resolve(connect(tracking_uri, timeout_s), ref, model.version)
    except RegistryError as e:
        log.warning("model registry: %s", e)
        failed = _without_error(old)
        failed.update(error=str(e), reason=e.reason, attemptedAt=iso(now), errorSpecKey=key)
        return _use(model, failed, e.reason, str(e))
    resolved = {"uri": model.storage_uri, **found, "resolvedAt": iso(now), "observedGeneration": generation,
                "specKey": key}
    return _use(model, resolved, RESOLVED, _said(resolved))


def _without_error(reg: dict) -> dict:
    return {k: v for k, v in reg.items() if k not in ("error", "reason", "attemptedAt", "errorSpecKey")}


def _said(reg: dict) -> str:
    return (f"{reg.get('uri')} is {reg.get('modelName')} version {reg.get('modelVersion')}: release "
            f"{reg.get('version')} at {reg.get('storageUri')}")


def _use(model: ModelRef, reg: dict, reason: str, message: str) -> Resolution:
    if not reg.get("storageUri"):
        return Resolution(None, reg, False, reason, message)
    ref = {"uri": reg["uri"], "name": reg["modelName"], "version": reg["modelVersion"]}
    release = model.resolved(reg["version"], reg["storageUri"], ref)
    return Resolution(release, reg, reason == RESOLVED, reason, message)
