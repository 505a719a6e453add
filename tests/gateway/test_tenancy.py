"""Tenants: a job, its stems, zip, progress, batch and idempotency key exist only for the tenant
that submitted it (another tenant's job id is a 404); re-separations, A/B stickiness and the fair
queue count a user within its tenant. The tenant comes from X-Test-Tenant here (conftest), where
credentials will set it."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client import REGISTRY
from websockets.sync.client import connect

from musicsplit.gateway.tenancy import Caller

from .conftest import GatewayThread, make_settings, tone, wait_job, wav_bytes
from .test_flags import AB, bootstrap_with


@pytest.fixture(scope="module")
def gw(baseline_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gw-tenants")
    # "tiny" only has to exist for the A/B flag to name it; these tests never send it a request.
    gateway = GatewayThread(make_settings(tmp, [("dsp-baseline", baseline_url, "eu"), ("tiny", baseline_url, "eu")],
                                          flags_bootstrap=bootstrap_with(tmp, **AB), default_model="dsp-baseline"),
                            tenants=True).start()
    yield gateway
    gateway.stop()


def as_tenant(tenant: str, user: str | None = "u1", **headers) -> dict[str, str]:
    return {"X-Test-Tenant": tenant, **({"X-User-Id": user} if user else {}), **headers}


def upload(gw, tenant: str, data: bytes, **headers) -> dict:
    r = httpx.post(f"{gw.url}/v1/separations", files={"file": ("a.wav", data, "audio/wav")},
                   data={"model": "dsp-baseline"}, headers=as_tenant(tenant, **headers), timeout=60)
    assert r.status_code == 202, r.text
    return r.json()


def test_another_tenants_job_is_not_there(gw):
    job = upload(gw, "acme", wav_bytes(tone(2.0, seed=301)))
    doc = wait_job(gw.url, job["id"], headers=as_tenant("acme"))
    assert doc["status"] == "succeeded", doc
    owner, other = as_tenant("acme"), as_tenant("globex")
    paths = [f"/v1/separations/{job['id']}", doc["zip_url"], doc["stems"]["vocals"]]
    for path in paths:
        assert httpx.get(gw.url + path, headers=owner, timeout=10).status_code == 200, path
        r = httpx.get(gw.url + path, headers=other, timeout=10)
        assert r.status_code == 404 and r.json()["code"] == "not_found", (path, r.text)
    assert httpx.delete(f"{gw.url}/v1/separations/{job['id']}", headers=other, timeout=10).status_code == 404
    with connect(gw.url.replace("http", "ws") + doc["progress_url"], additional_headers=other) as ws:
        assert json.loads(ws.recv())["code"] == "not_found"
    with connect(gw.url.replace("http", "ws") + doc["progress_url"], additional_headers=owner) as ws:
        assert json.loads(ws.recv())["status"] == "succeeded"


def test_a_batch_belongs_to_its_tenant(gw):
    files = [("files", (f"s{i}.wav", wav_bytes(tone(1.0, seed=310 + i)), "audio/wav")) for i in range(2)]
    r = httpx.post(f"{gw.url}/v1/separations/batch", files=files, headers=as_tenant("acme"), timeout=60)
    assert r.status_code == 202, r.text
    batch = r.json()["batch_id"]
    assert len(httpx.get(f"{gw.url}/v1/batches/{batch}", headers=as_tenant("acme")).json()["jobs"]) == 2
    assert httpx.get(f"{gw.url}/v1/batches/{batch}", headers=as_tenant("globex")).status_code == 404


def test_an_idempotency_key_is_the_tenants_own(gw):
    data = wav_bytes(tone(1.0, seed=320))
    a = upload(gw, "acme", data, **{"Idempotency-Key": "order-7"})
    assert upload(gw, "acme", data, **{"Idempotency-Key": "order-7"})["id"] == a["id"]
    b = upload(gw, "globex", data, **{"Idempotency-Key": "order-7"})
    assert b["id"] != a["id"]
    assert httpx.get(f"{gw.url}/v1/separations/{b['id']}", headers=as_tenant("globex")).status_code == 200


def _reseparations() -> float:
    return sum(s.value for m in REGISTRY.collect() if m.name == "musicsplit_gateway_reseparations"
               for s in m.samples if s.name.endswith("_total") and s.labels.get("model") == "dsp-baseline")


def test_a_reseparation_is_the_same_user_of_the_same_tenant(gw):
    data = wav_bytes(tone(1.0, seed=330))
    before = _reseparations()
    upload(gw, "acme", data, user="same-name")
    upload(gw, "globex", data, user="same-name")  # another tenant's user of that name: someone else
    assert _reseparations() == before
    upload(gw, "acme", data, user="same-name")
    assert _reseparations() == before + 1


def test_ab_arms_and_queue_places_are_per_tenant_user(gw):
    service = gw.service
    arms = {t: [service.resolve("default", Caller(t, f"user-{i}")).arm for i in range(40)] for t in ("acme", "globex")}
    again = [service.resolve("default", Caller("acme", f"user-{i}")).arm for i in range(40)]
    assert arms["acme"] == again, "sticky per tenant/user"
    assert set(arms["acme"]) == {"baseline", "demucs"}
    # The same user name in another tenant is another user: its arm is drawn on its own.
    assert arms["acme"] != arms["globex"]
    assert Caller("acme", "u").owner != Caller("globex", "u").owner
    assert Caller("acme", None).flag_user is None  # anonymous: no stickiness to share
