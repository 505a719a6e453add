"""Shadow traffic, the gateway's side: a real gateway reads which model has a
canary from a SeparationModel's status in kmock's Kubernetes API, mirrors
users' v2 requests and job chunks to the canary (a real predictor behind a
recording proxy that can hold answers), and compares. Users' answers never
wait for a mirrored call; the concurrency bound drops, never queues; sample
rate 0 mirrors nothing. The operator's side and the whole loop:
tests/operator/test_shadow.py, tests/operator/test_shadow_e2e.py."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import REGISTRY

from musicsplit.gateway.upstream.canaries import Canary, CanaryDirectory, canaries_from
from musicsplit.gateway.settings import GatewaySettings
from musicsplit.gateway.upstream.shadow import AGREEMENT_CAP_DB, ShadowMirror, agreement_db, agreements
from musicsplit.localstack import start_predictor, wait_until
from musicsplit.v2client import SOURCE_HEADER, V2Client, encode_request
from tests.fixtures.recorder import Recorder
from tests.gateway.conftest import bearer, submit, tenants_file, tone, wait_job, wav_bytes
from tests.operator.cluster import Cluster, operator_api_calls

MANIFESTS = Path(__file__).resolve().parents[3] / "manifests"
MODEL = "dsp-baseline"  # the stable: the session's baseline predictor
CANARY_VERSION = "2.0.0-canary"
SM_PATH = "/apis/musicsplit.io/v1alpha1/namespaces/{ns}/separationmodels"


# ---------------------------------------------------------------- pure parts


def test_agreement_is_the_canarys_sdr_against_the_stable_within_0_to_100_db():
    rng = np.random.default_rng(0)
    stable = rng.standard_normal((2, 44100)).astype(np.float32)
    assert agreement_db(stable, stable.copy()) == AGREEMENT_CAP_DB
    noisy = stable + 0.1 * rng.standard_normal(stable.shape).astype(np.float32)  # 20 dB below
    assert agreement_db(stable, noisy) == pytest.approx(20, abs=0.3)
    assert agreement_db(stable, stable + 1e-6) == pytest.approx(AGREEMENT_CAP_DB)  # within rounding: the cap
    assert agreement_db(stable, 0.5 * stable) == pytest.approx(6.02, abs=0.01)
    assert agreement_db(stable, -stable) == 0.0  # further from the stable than silence: no agreement
    assert agreement_db(np.zeros((2, 100)), np.full((2, 100), 1e-6)) == AGREEMENT_CAP_DB  # both silent: agree
    assert agreement_db(np.zeros((2, 100)), np.full((2, 100), 0.5)) == 0.0  # silent stable, loud canary
    with pytest.raises(ValueError, match="shapes differ"):
        agreement_db(stable, stable[:, :100])
    assert agreements({"vocals": stable, "drums": stable}, {"vocals": noisy, "bass": stable}).keys() == {"vocals"}
    with pytest.raises(ValueError, match="no stem in common"):
        agreements({"vocals": stable}, {"drums": stable})


def test_canaries_come_from_complete_shadow_statuses_only():
    def sm(name, **shadow):
        return {"metadata": {"name": name}, "status": {"shadow": shadow} if shadow else {}}

    full = dict(canaryUrl="http://latest-a.ml.svc/", canaryVersion="2", stableVersion="1")
    found = canaries_from([sm("a", **full), sm("b"), sm("c", canaryUrl="http://x", canaryVersion="2"),
                           sm("d", **{**full, "canaryUrl": "file:///etc/passwd"}), {"metadata": {}}])
    assert found == {"a": Canary("a", "http://latest-a.ml.svc", "2", "1")}


class Static:
    """A directory that knows one canary (the real one lists SeparationModels: below)."""

    namespace = "ml"

    def get(self, model):
        return Canary(model, "http://canary", "2.0", "1.0") if model == "m" else None


def test_what_is_mirrored():
    def mirror(rate, draw=0.5):
        settings = GatewaySettings(shadow_enabled=True, shadow_sample_rate=rate, shadow_max_concurrent=1)
        return ShadowMirror(settings, directory=Static(), rng=lambda: draw)

    assert mirror(1.0)._admit("m", "1.0", 1) is not None
    assert mirror(1.0)._admit("m", "2.0", 1) is None  # the canary answered the user itself
    assert mirror(1.0)._admit("m", None, 1) is None  # nobody says which version answered
    assert mirror(1.0)._admit("other", "1.0", 1) is None  # no canary step for this model
    assert mirror(0.6, draw=0.5)._admit("m", "1.0", 1) is not None
    assert mirror(0.4, draw=0.5)._admit("m", "1.0", 1) is None
    assert mirror(0.0, draw=0.0)._admit("m", "1.0", 1) is None
    off = ShadowMirror(GatewaySettings(shadow_sample_rate=1.0), directory=Static())
    assert off._admit("m", "1.0", 1) is None


async def test_a_separation_too_large_to_hold_twice_is_not_mirrored():
    """A mirror holds its request and both answers: one over shadow_max_bytes is skipped (counted)."""
    settings = GatewaySettings(shadow_enabled=True, shadow_sample_rate=1.0, shadow_max_bytes=10 * 1024 * 1024)
    mirror = ShadowMirror(settings, directory=Static())
    samples = np.zeros((2, 44100 * 10), np.float32)  # 3.4 MB; four stems of it, twice: 28 MB more
    stems = {s: samples for s in ("drums", "bass", "other", "vocals")}
    skipped = shadow_counts("m")["skipped"]
    mirror.offer_chunk("m", "1.0", samples, 44100, stems)
    assert mirror.inflight == 0 and shadow_counts("m")["skipped"] == skipped + 1
    assert mirror._admit("m", "1.0", 10 * 1024 * 1024) is not None  # at the bound: mirrored


# ---------------------------------------------------------------- a real gateway


def shadow_counts(model: str = MODEL) -> dict[str, float]:
    """The gateway's (in this process) shadow counters."""
    return {o: REGISTRY.get_sample_value("musicsplit_gateway_shadow_requests_total",
                                         {"model": model, "outcome": o}) or 0.0
            for o in ("compared", "skipped", "failed")}


def agreement(stable_version: str, stem: str, what: str, namespace: str = "default") -> float:
    return REGISTRY.get_sample_value(f"musicsplit_gateway_shadow_agreement_db_{what}", {
        "model": MODEL, "model_namespace": namespace, "canary_version": CANARY_VERSION,
        "stable_version": stable_version, "stem": stem}) or 0.0


def canary_requests(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=5).text):
        for s in family.samples:
            if s.name == "musicsplit_requests_total" and s.labels.get("model_version") == CANARY_VERSION:
                out[s.labels["source"]] = out.get(s.labels["source"], 0) + s.value
    return out


class Kube:
    """kmock's API with the CRD, and SeparationModels whose status says where their canary is."""

    def __init__(self, cluster: Cluster, stable_version: str):
        self.cluster, self.stable_version = cluster, stable_version
        self.http = httpx.Client(base_url=cluster.url, timeout=10)

    def canary_at(self, url: str, namespace: str = "default") -> None:
        """A SeparationModel of MODEL whose status.shadow names `url`, as the operator writes it."""
        self.cluster.apply({
            "apiVersion": "musicsplit.io/v1alpha1", "kind": "SeparationModel",
            "metadata": {"name": MODEL, "namespace": namespace},
            "spec": {"model": {"architecture": "dsp", "version": CANARY_VERSION,
                               "storageUri": f"gs://models/{MODEL}/{CANARY_VERSION}"}}})
        r = self.http.patch(f"{SM_PATH.format(ns=namespace)}/{MODEL}/status", json={"status": {
            "phase": "Progressing", "canaryVersion": CANARY_VERSION, "canaryWeight": 20,
            "shadow": {"canaryUrl": url, "canaryVersion": CANARY_VERSION, "stableVersion": self.stable_version}}},
            headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def kube(tmp_path_factory, baseline_url, logs_dir):
    """kmock, a canary predictor (the DSP baseline as CANARY_VERSION: it separates as the
    stable does) behind a recording proxy whose answers the test can hold."""
    d = tmp_path_factory.mktemp("kube")
    canary = start_predictor("builtin://dsp-baseline", MODEL, log_dir=logs_dir,
                             env={"MUSICSPLIT_EXPECTED_VERSION": CANARY_VERSION})
    stable_version = V2Client(baseline_url).separate(MODEL, tone(0.5), 44100).model_version
    gate = threading.Event()
    try:
        with Cluster(d) as cluster, Recorder(forward_to=canary.url, gate=gate) as proxy:
            cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
            k = Kube(cluster, stable_version)
            k.canary_at(proxy.url)
            yield k, canary, proxy, gate
    finally:
        canary.stop()


def shadow_settings(kube, **over) -> dict:
    return {"shadow_enabled": True, "shadow_sample_rate": 1.0, "shadow_max_concurrent": 2,
            "shadow_namespace": "default", "shadow_refresh_s": 0.2, "shadow_kubeconfig": kube.cluster.kubeconfig,
            "cache_backend": "none", **over}


def knows_canary(gw) -> None:
    wait_until(lambda: gw.service.shadow.directory.get(MODEL), 15, "the gateway reads the canary from the API")


@pytest.mark.slow
def test_users_are_answered_while_their_mirrors_are_held_and_the_bound_drops_the_rest(kube, gateway_factory,
                                                                                     baseline_url, chart_role):
    k, canary, proxy, gate = kube
    gate.clear()
    gw = gateway_factory([(MODEL, baseline_url, "local")], **shadow_settings(k, shadow_max_concurrent=2))
    knows_canary(gw)
    before, seen_before = shadow_counts(), len(proxy.seen())
    mixture = tone(1.0, seed=11)
    with V2Client(gw.url, headers={"X-User-Id": "u1"}) as users:
        first = users.separate(MODEL, mixture, 44100)
        # The first mirror reaches the canary and is held there...
        wait_until(lambda: len(proxy.seen()) == seen_before + 1, 15, "the first mirrored request at the canary")
        # ...while the next users are answered: no answer waits for a mirrored call.
        answers = [users.separate(MODEL, mixture, 44100) for _ in range(4)]
        assert not gate.is_set() and gw.service.shadow.inflight == 2
    for sep in [first, *answers]:
        assert sep.model_version == k.stable_version and set(sep.stems) == {"drums", "bass", "other", "vocals"}
    wait_until(lambda: len(proxy.seen()) == seen_before + 2, 15, "the second mirrored request at the canary")
    after = shadow_counts()
    # Two in flight (the bound), the other three dropped, not queued.
    assert after["skipped"] - before["skipped"] == 3 and after["compared"] == before["compared"]
    mirrored = proxy.seen()[seen_before:]
    assert all(r.headers[SOURCE_HEADER.lower()] == "shadow" and r.path == f"/v2/models/{MODEL}/infer"
               for r in mirrored)

    stems = ("drums", "bass", "other", "vocals")
    counted = {stem: agreement(k.stable_version, stem, "count") for stem in stems}
    summed = {stem: agreement(k.stable_version, stem, "sum") for stem in stems}
    gate.set()
    wait_until(lambda: shadow_counts()["compared"] - before["compared"] == 2, 30, "the held mirrors compared")
    assert shadow_counts()["failed"] == before["failed"]
    for stem in stems:
        # Two comparisons per stem; the same DSP on both sides: the stems agree to the cap.
        assert agreement(k.stable_version, stem, "count") - counted[stem] == 2
        assert agreement(k.stable_version, stem, "sum") - summed[stem] == 2 * AGREEMENT_CAP_DB
    # The canary counted them apart from users.
    assert canary_requests(canary.url).get("shadow", 0) >= 2 and canary_requests(canary.url).get("user", 0) == 0
    # The gateway asked the Kubernetes API only what the chart's Role grants it.
    used = operator_api_calls(k.cluster, agents=("musicsplit-gateway",))
    assert used and used <= chart_role, used


def test_each_chunk_of_a_job_is_compared_with_the_canary(kube, gateway_factory, baseline_url):
    k, _, proxy, gate = kube
    gate.set()
    gw = gateway_factory([(MODEL, baseline_url, "local")], **shadow_settings(k, shadow_max_concurrent=8))
    knows_canary(gw)
    before, seen_before = shadow_counts(), len(proxy.seen())
    count_before = agreement(k.stable_version, "drums", "count")
    r = submit(gw.url, wav_bytes(tone(10.0, seed=12)), user="u2")
    assert r.status_code == 202, r.text
    job = wait_job(gw.url, r.json()["id"])
    assert job["status"] == "succeeded", job
    chunks = gw.job(job["id"]).result["chunks"]
    assert chunks >= 3
    wait_until(lambda: shadow_counts()["compared"] - before["compared"] == chunks, 30, "every chunk compared")
    assert agreement(k.stable_version, "drums", "count") - count_before == chunks
    assert len(proxy.seen()) - seen_before == chunks and shadow_counts()["skipped"] == before["skipped"]


def test_mirrors_respect_tenancy_and_count_against_no_quota(kube, gateway_factory, baseline_url, tmp_path):
    """A tenant's v2 requests (API key, quotas) are mirrored as sent, minus the credentials and
    the user; the tenant's requests and audio are counted once, for its own requests only."""
    k, _, proxy, gate = kube
    gate.set()
    keys = tenants_file(tmp_path / "tenants.yaml", {"shadowed": {"quota": {
        "requests_per_minute": 3, "audio_minutes_per_day": 1}}}, keys={"shadowed": "shadowed-key-000"})
    gw = gateway_factory([(MODEL, baseline_url, "local")], api_keys_file=keys, **shadow_settings(k))
    knows_canary(gw)

    def tenant(name: str, labels: dict) -> float:
        return REGISTRY.get_sample_value(f"musicsplit_gateway_{name}", {"tenant": "shadowed", **labels}) or 0.0

    before, seen_before = shadow_counts(), len(proxy.seen())
    accepted, audio = tenant("tenant_requests_total", {"outcome": "accepted"}), tenant("tenant_audio_seconds_total", {})
    refused = tenant("quota_rejections_total", {"quota": "requests_per_minute"})
    mixtures = [tone(1.0, seed=30 + i) for i in range(3)]
    with V2Client(gw.url, headers=bearer("shadowed-key-000", user="end-user-7")) as client:
        for i, mixture in enumerate(mixtures, 1):  # one at a time: each mirror done before the next
            client.separate(MODEL, mixture, 44100)
            wait_until(lambda i=i: shadow_counts()["compared"] - before["compared"] == i, 30, "the mirror compared")
    assert shadow_counts()["skipped"] == before["skipped"] and shadow_counts()["failed"] == before["failed"]
    mirrored = proxy.seen()[seen_before:]
    assert [r.body for r in mirrored] == [encode_request(m, 44100)[0] for m in mixtures]  # sent as the user sent it
    for r in mirrored:
        assert "authorization" not in r.headers and "x-user-id" not in r.headers, r.headers
    # Counted once each: three requests fill the tenant's requests-per-minute quota, and none was refused.
    assert tenant("tenant_requests_total", {"outcome": "accepted"}) - accepted == 3
    assert tenant("tenant_audio_seconds_total", {}) - audio == pytest.approx(3.0, abs=0.01)
    assert tenant("quota_rejections_total", {"quota": "requests_per_minute"}) == refused


def test_sample_rate_zero_mirrors_nothing(kube, gateway_factory, baseline_url):
    """Two gateways take turns with the same users' requests: one mirrors none
    (sample rate 0), the control one all. Once the control's mirrors of later
    requests have reached its canary, the first one's, had it sent any, would have."""
    k, _, proxy, gate = kube
    gate.set()
    with Recorder(forward_to=proxy.forward_to) as silent:
        k.canary_at(silent.url, namespace="zero")
        zero = gateway_factory([(MODEL, baseline_url, "local")],
                               **shadow_settings(k, shadow_sample_rate=0.0, shadow_namespace="zero"))
        control = gateway_factory([(MODEL, baseline_url, "local")], **shadow_settings(k, shadow_max_concurrent=4))
        knows_canary(zero)
        knows_canary(control)
        seen_before = len(proxy.seen())
        with V2Client(zero.url) as a, V2Client(control.url) as b:
            for i in range(3):
                mixture = tone(0.5, seed=20 + i)
                assert a.separate(MODEL, mixture, 44100).stems  # traffic flowed through the silent one
                b.separate(MODEL, mixture, 44100)
        wait_until(lambda: len(proxy.seen()) - seen_before >= 3, 30, "the control's mirrors at its canary")
        assert silent.seen() == []


@pytest.mark.slow
def test_the_directory_forgets_canaries_it_cannot_confirm(tmp_path):
    cluster = Cluster(tmp_path).__enter__()
    up = True

    async def until(condition, what: str) -> None:
        for _ in range(200):
            if condition():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"not within 10 s: {what}")

    async def scenario():
        nonlocal up
        directory = CanaryDirectory("default", refresh_s=0.2, kubeconfig=cluster.kubeconfig)
        directory.start()
        try:
            await until(lambda: directory.get(MODEL), "the canary read")
            assert directory.get(MODEL) == Canary(MODEL, "http://latest-canary", CANARY_VERSION, "1.0")
            cluster.__exit__(None, None, None)  # the API goes away
            up = False
            await until(lambda: directory.get(MODEL) is None, "the canary forgotten")
        finally:
            await directory.stop()

    try:
        cluster.kubectl("apply", "-f", str(MANIFESTS / "crd.yaml"))
        Kube(cluster, "1.0").canary_at("http://latest-canary")
        asyncio.run(scenario())
    finally:
        if up:
            cluster.__exit__(None, None, None)


@pytest.fixture(scope="module")
def chart_role() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) the chart's Role grants the gateway when shadow traffic is on."""
    import helm_python as helm

    from tests.charts.conftest import CHART_DIR, render

    with helm.Chart.load(CHART_DIR) as chart:
        role = render(chart, {"gateway": {"shadow": {"enabled": True}, "pinVersions": False}}).one(
            "Role", "prod-musicsplit-gateway-separationmodel-reader")
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}
