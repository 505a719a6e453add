"""Which models have a canary step under way, and where each version answers on its own.

The operator publishes it in each SeparationModel's `status.shadow`
(`canaryUrl`, `canaryVersion`, `stableVersion`) while a canary step serves
users both versions, and removes it otherwise; the SeparationModel's name is
the model name the gateway routes. Shadow traffic goes to the canary's URL.

A job's chunks go to the version its first chunk pinned (`version_url`):
the canary's URL above (KServe Knative's `latest` tag: that revision alone),
and, where the operator publishes them, `status.endpoints.{stable,canary}`
(`{version, url}`: a per-revision tag URL in Knative mode, each predictor's
own Service in Standard mode). Behind the shared URL a split answers either
version; a pinned URL answers one. `CanaryDirectory` lists them in one
namespace through the Kubernetes API (the gateway imports nothing of the
operator): RBAC `list` on `separationmodels.musicsplit.io` there.

A directory that cannot reach the API keeps what it knew for three refresh
intervals, then forgets it: mirroring to a canary that may have been rolled
back meanwhile would cost compute for comparisons nobody judges.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "musicsplit.io", "v1alpha1", "separationmodels"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
PAGE = 200  # SeparationModels per list call: each answer stays small
STALE_AFTER_REFRESHES = 3


@dataclass(frozen=True)
class Canary:
    model: str
    url: str
    canary_version: str
    stable_version: str


def canaries_from(items: list[dict]) -> dict[str, Canary]:
    """SeparationModels -> {model name: Canary} for those whose status.shadow is complete and says http(s)."""
    out = {}
    for sm in items:
        name = (sm.get("metadata") or {}).get("name")
        shadow = (sm.get("status") or {}).get("shadow") or {}
        url, canary, stable = shadow.get("canaryUrl"), shadow.get("canaryVersion"), shadow.get("stableVersion")
        if not (name and isinstance(url, str) and url.startswith(("http://", "https://")) and canary and stable):
            continue
        out[name] = Canary(name, url.rstrip("/"), str(canary), str(stable))
    return out


def version_urls_from(items: list[dict]) -> dict[tuple[str, str], str]:
    """SeparationModels -> {(model name, version): the URL where that version alone answers}."""
    out: dict[tuple[str, str], str] = {}
    for sm in items:
        name = (sm.get("metadata") or {}).get("name")
        status = sm.get("status") or {}
        shadow = status.get("shadow") or {}
        published = [(shadow.get("canaryVersion"), shadow.get("canaryUrl"))]
        endpoints = status.get("endpoints") or {}
        if isinstance(endpoints, dict):
            published += [((e or {}).get("version"), (e or {}).get("url")) for e in endpoints.values()
                          if isinstance(e, dict)]
        for version, url in published:
            if name and version and isinstance(url, str) and url.startswith(("http://", "https://")):
                out[(name, str(version))] = url.rstrip("/")
    return out


def _api_client(kubeconfig: Path | None):
    """An ApiClient of its own (the process-wide default configuration is left alone):
    the given kubeconfig, else the pod's service account, else $KUBECONFIG / ~/.kube/config."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if kubeconfig is not None:
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg, persist_config=False)
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg, persist_config=False)
    api = client.ApiClient(cfg)
    api.user_agent = "musicsplit-gateway/shadow"
    return api


def default_namespace(kubeconfig: Path | None) -> str:
    """The pod's own namespace in a cluster, else the kubeconfig context's, else `default`."""
    if kubeconfig is None and SERVICE_ACCOUNT_NAMESPACE.is_file():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    try:
        from kubernetes import config

        _, active = config.list_kube_config_contexts(str(kubeconfig) if kubeconfig else None)
        return (active.get("context") or {}).get("namespace") or "default"
    except Exception:  # no kubeconfig: the API client says so when it is built
        return "default"


class CanaryDirectory:
    """The canaries in one namespace, refreshed every `refresh_s` in the background."""

    def __init__(self, namespace: str | None, refresh_s: float, kubeconfig: Path | None = None,
                 timeout_s: float = 10.0):
        self.namespace = namespace or default_namespace(kubeconfig)
        self.refresh_s = refresh_s
        self.kubeconfig = kubeconfig
        self.timeout_s = timeout_s
        self._canaries: dict[str, Canary] = {}
        self._version_urls: dict[tuple[str, str], str] = {}
        self._confirmed = 0.0  # monotonic time of the last successful list
        self._api = None
        self._task: asyncio.Task | None = None

    def get(self, model: str) -> Canary | None:
        self._forget_if_stale()
        return self._canaries.get(model)

    def version_url(self, model: str, version: str) -> str | None:
        """Where `version` of `model` answers on its own, if the operator publishes it."""
        self._forget_if_stale()
        return self._version_urls.get((model, version))

    def _forget_if_stale(self) -> None:
        if ((self._canaries or self._version_urls)
                and time.monotonic() - self._confirmed > STALE_AFTER_REFRESHES * self.refresh_s):
            log.warning("SeparationModels in %s unread for %.0f s; no mirroring or version pinning until they are",
                        self.namespace, time.monotonic() - self._confirmed)
            self._canaries, self._version_urls = {}, {}

    def _list(self) -> list[dict]:
        from kubernetes import client

        if self._api is None:
            self._api = _api_client(self.kubeconfig)
        api = client.CustomObjectsApi(self._api)
        items, token = [], None
        while True:
            page = api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, limit=PAGE,
                                                     _continue=token, _request_timeout=self.timeout_s)
            items += page.get("items") or []
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    async def refresh(self) -> None:
        """One read of the namespace's SeparationModels (raises what the API client raises)."""
        items = await asyncio.to_thread(self._list)
        canaries = canaries_from(items)
        self._version_urls = version_urls_from(items)
        if canaries.keys() != self._canaries.keys():
            log.info("shadow traffic: canaries in %s: %s", self.namespace,
                     ", ".join(f"{c.model} {c.canary_version} at {c.url}" for c in canaries.values()) or "none")
        self._canaries, self._confirmed = canaries, time.monotonic()

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await self.refresh()
                failing = False
            except Exception as exc:  # the API down, RBAC missing, no config: say it once per outage
                if not failing:
                    log.error("shadow traffic: cannot list SeparationModels in %s: %s", self.namespace, exc)
                failing = True
            await asyncio.sleep(self.refresh_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="shadow-canaries")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._api is not None:
            api, self._api = self._api, None
            await asyncio.to_thread(api.close)
