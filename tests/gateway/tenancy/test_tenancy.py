"""Tenants, authenticated by their API keys: a job, its stems, zip, progress, batch, idempotency key and
job list exist only for the tenant that submitted it (another tenant's job id is a 404);
re-separations, A/B stickiness, the fair queue and the result cache count within a tenant."""

from __future__ import annotations

import contextlib
import json

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from musicsplit.gateway.tenancy.callers import Caller
from musicsplit.localstack import wait_until

from tests.gateway.conftest import GatewayThread, bearer, make_settings, tenants_file, tone, wait_job, wav_bytes
from tests.gateway.experiments.test_flags import AB, bootstrap_with

KEYS = {"acme": "acme-key-0123456789", "globex": "globex-key-9876543210"}


@pytest.fixture(scope="module")
def gw(baseline_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gw-tenants")
    keys = tenants_file(tmp / "tenants.yaml", {"acme": {}, "globex": {}}, KEYS)
    # "tiny" only has to exist for the A/B flag to name it; these tests never send it a request.
    gateway = GatewayThread(make_settings(tmp, [("dsp-baseline", baseline_url, "eu"), ("tiny", baseline_url, "eu")],
                                          flags_bootstrap=bootstrap_with(tmp, **AB), default_model="dsp-baseline",
                                          api_keys_file=keys)).start()
    yield gateway
    gateway.stop()


def as_tenant(tenant: str, user: str | None = "u1", **headers) -> dict[str, str]:
    return bearer(KEYS[tenant], user, **headers)


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
    assert httpx.post(f"{gw.url}/v1/separations/{job['id']}/progress-ticket", headers=other).status_code == 404
    assert refusal(gw.url.replace("http", "ws") + doc["progress_url"], additional_headers=other) == (404, "not_found")
    with connect(gw.url.replace("http", "ws") + doc["progress_url"], additional_headers=owner) as ws:
        assert json.loads(ws.recv())["status"] == "succeeded"


def test_without_credentials_nothing_is_there(gw):
    job = upload(gw, "acme", wav_bytes(tone(1.0, seed=302)))
    for method, path in [("GET", f"/v1/separations/{job['id']}"), ("DELETE", f"/v1/separations/{job['id']}"),
                         ("GET", "/v1/separations"), ("GET", "/v2/models/default/ready")]:
        r = httpx.request(method, gw.url + path, timeout=10)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized", (path, r.text)
        assert r.headers["www-authenticate"] == 'Bearer realm="musicsplit"'
    assert refusal(gw.url.replace("http", "ws") + job["progress_url"]) == (401, "unauthorized")
    assert httpx.get(f"{gw.url}/v2/health/live").status_code == 200  # probes need no key
    assert httpx.get(f"{gw.url}/v2/health/ready").status_code == 200


def test_a_progress_ticket_opens_one_jobs_websocket_once(gw):
    a = upload(gw, "acme", wav_bytes(tone(1.0, seed=303)))
    b = upload(gw, "acme", wav_bytes(tone(1.0, seed=304)))
    r = httpx.post(f"{gw.url}/v1/separations/{a['id']}/progress-ticket", headers=as_tenant("acme"))
    assert r.status_code == 201, r.text
    ticket = r.json()
    ws_base = gw.url.replace("http", "ws")
    assert refusal(f"{ws_base}/v1/separations/{b['id']}/progress?ticket={ticket['ticket']}") == (
        401, "unauthorized")  # another job's ticket (and now used up), refused before the handshake
    r = httpx.post(f"{gw.url}/v1/separations/{a['id']}/progress-ticket", headers=as_tenant("acme"))
    with connect(ws_base + r.json()["progress_url"]) as ws:  # no Authorization header: a browser
        assert json.loads(ws.recv())["id"] == a["id"]
    assert refusal(ws_base + r.json()["progress_url"]) == (401, "unauthorized"), "a ticket works once"


def refusal(url: str, **kw) -> tuple[int, str]:
    """A WebSocket refused at its handshake: (HTTP status, error code)."""
    with pytest.raises(InvalidStatus) as refused:
        connect(url, **kw)
    return refused.value.response.status_code, json.loads(refused.value.response.body)["code"]


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


def test_the_job_list_is_the_tenants_paged_and_filtered(gw):
    mine = [upload(gw, "globex", wav_bytes(tone(1.0, seed=340 + i)), user="lister")["id"] for i in range(3)]
    theirs = upload(gw, "acme", wav_bytes(tone(1.0, seed=349)), user="lister")["id"]
    for job in mine:
        wait_job(gw.url, job, headers=as_tenant("globex"))
    seen, cursor = [], None
    while True:  # pages of two, newest first, until the last page says so
        params = {"limit": 2, "user_id": "lister", **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{gw.url}/v1/separations", params=params, headers=as_tenant("globex")).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == mine[::-1] and theirs not in seen
    done = httpx.get(f"{gw.url}/v1/separations", params={"status": "succeeded", "user_id": "lister"},
                     headers=as_tenant("globex")).json()["jobs"]
    assert {j["id"] for j in done} == set(mine) and all(j["status"] == "succeeded" for j in done)
    r = httpx.get(f"{gw.url}/v1/separations", params={"status": "finished"}, headers=as_tenant("globex"))
    assert r.status_code == 400 and "status 'finished'" in r.json()["error"]
    r = httpx.get(f"{gw.url}/v1/separations", params={"cursor": "nonsense"}, headers=as_tenant("globex"))
    assert r.status_code == 400 and "next_cursor" in r.json()["error"]


def _sum(name: str, **labels) -> float:
    return sum(s.value for m in REGISTRY.collect() if m.name == name for s in m.samples
               if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()))


def test_a_reseparation_is_the_same_user_of_the_same_tenant(gw):
    data = wav_bytes(tone(1.0, seed=330))
    before = _sum("musicsplit_gateway_reseparations", model="dsp-baseline")
    upload(gw, "acme", data, user="same-name")
    upload(gw, "globex", data, user="same-name")  # another tenant's user of that name: someone else
    assert _sum("musicsplit_gateway_reseparations", model="dsp-baseline") == before
    upload(gw, "acme", data, user="same-name")
    assert _sum("musicsplit_gateway_reseparations", model="dsp-baseline") == before + 1


def test_the_result_cache_is_not_shared_between_tenants(gw):
    data = wav_bytes(tone(2.0, seed=350))
    first = wait_job(gw.url, upload(gw, "acme", data, user="c1")["id"], headers=as_tenant("acme"))
    again = wait_job(gw.url, upload(gw, "acme", data, user="c2")["id"], headers=as_tenant("acme"))
    other = wait_job(gw.url, upload(gw, "globex", data, user="c1")["id"], headers=as_tenant("globex"))
    assert not first["cached"] and again["cached"], "the same tenant's repeat is a cache hit"
    assert not other["cached"], "another tenant's identical upload is separated afresh, not answered from acme's"


def test_tenant_metrics_count_requests_jobs_and_audio(gw):
    scraped = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(httpx.get(gw.metrics_url).text) for s in f.samples}
    # Every configured tenant's series exist from the start (acme has no quota: never refused).
    assert scraped[("musicsplit_gateway_tenant_requests_total",
                    (("outcome", "rejected_quota"), ("tenant", "acme")))] == 0.0
    before = {k: _sum(k, tenant="globex") for k in ("musicsplit_gateway_tenant_requests",
                                                   "musicsplit_gateway_tenant_audio_seconds",
                                                   "musicsplit_gateway_tenant_jobs")}
    wait_job(gw.url, upload(gw, "globex", wav_bytes(tone(1.5, seed=360)))["id"], headers=as_tenant("globex"))
    bad = httpx.post(f"{gw.url}/v1/separations", files={"file": ("x.wav", b"not audio")}, headers=as_tenant("globex"))
    assert bad.status_code == 400
    assert _sum("musicsplit_gateway_tenant_audio_seconds", tenant="globex") == before[
        "musicsplit_gateway_tenant_audio_seconds"] + 1.5
    assert _sum("musicsplit_gateway_tenant_jobs", tenant="globex", outcome="success") >= 1
    assert _sum("musicsplit_gateway_tenant_requests", tenant="globex", outcome="rejected_input") >= 1
    assert _sum("musicsplit_gateway_tenant_requests", tenant="globex") > before["musicsplit_gateway_tenant_requests"]


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


def test_progress_websockets_are_capped_per_job_and_per_tenant(black_hole, tmp_path):
    keys = tenants_file(tmp_path / "tenants.yaml", {"acme": {}}, KEYS)
    settings = make_settings(tmp_path, [("dsp-baseline", black_hole, "eu")], api_keys_file=keys,
                             request_timeout_s=60, health_interval_s=60, max_progress_sockets_per_job=2,
                             max_progress_sockets_per_tenant=3)
    with GatewayThread(settings) as gw:
        jobs = [upload(gw, "acme", wav_bytes(tone(1.0, seed=330 + i))) for i in range(2)]  # running, never ending
        ws_base, auth = gw.url.replace("http", "ws"), as_tenant("acme")
        with contextlib.ExitStack() as sockets:
            for _ in range(2):
                sockets.enter_context(connect(ws_base + jobs[0]["progress_url"], additional_headers=auth)).recv()
            assert refusal(ws_base + jobs[0]["progress_url"], additional_headers=auth) == (429, "quota_exceeded")
            sockets.enter_context(connect(ws_base + jobs[1]["progress_url"], additional_headers=auth)).recv()
            assert refusal(ws_base + jobs[1]["progress_url"], additional_headers=auth) == (429, "quota_exceeded")
        # Closed: their places are free again.
        wait_until(lambda: not gw.service.socket_slots.tenants, 10, "the closed sockets' places back")
        with connect(ws_base + jobs[0]["progress_url"], additional_headers=auth) as ws:
            assert json.loads(ws.recv())["id"] == jobs[0]["id"]
        for job in jobs:
            httpx.delete(f"{gw.url}/v1/separations/{job['id']}", headers=auth)
