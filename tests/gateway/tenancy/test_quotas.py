"""Tenant quotas: over a quota is a 429 with Retry-After and a message naming the quota; quotas are
counted in the job store, so they hold across replicas (two gateways on one database) and on
PostgreSQL as on SQLite; another tenant is never held back."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from prometheus_client import REGISTRY

from musicsplit.errors import QuotaExceeded
from musicsplit.gateway.storage.jobstore import ActiveJobLimit
from musicsplit.gateway.tenancy.quotas import Quotas
from musicsplit.gateway.tenancy.tenants import Quota, Tenant
from musicsplit.localstack import wait_until

from tests.gateway.conftest import GatewayThread, bearer, make_settings, tenants_file, tone, wav_bytes

KEYS = {"tight": "tight-key-000000", "roomy": "roomy-key-000000"}


def _rejections(tenant: str, quota: str) -> float:
    return sum(s.value for m in REGISTRY.collect() if m.name == "musicsplit_gateway_quota_rejections"
               for s in m.samples if s.name.endswith("_total") and s.labels == {"tenant": tenant, "quota": quota})


def _upload(url: str, key: str, data: bytes, **form) -> httpx.Response:
    return httpx.post(f"{url}/v1/separations", files={"file": ("a.wav", data, "audio/wav")},
                      data={"model": "dsp-baseline", **form}, headers=bearer(key), timeout=60)


def test_requests_per_minute_hold_across_two_replicas(baseline_url, tmp_path):
    keys = tenants_file(tmp_path / "tenants.yaml", {"tight": {"quota": {"requests_per_minute": 6}}, "roomy": {}},
                        KEYS)
    settings = make_settings(tmp_path / "data", [("dsp-baseline", baseline_url, "eu")], api_keys_file=keys)
    before = _rejections("tight", "requests_per_minute")
    with GatewayThread(settings) as a, GatewayThread(settings) as b:  # one job store: two replicas
        while time.time() % 60 > 40:  # all of it within one minute window (the replicas are up by now)
            time.sleep(0.5)
        answers = [httpx.get(f"{gw.url}/v1/separations", headers=bearer(KEYS["tight"])) for gw in (a, b) * 3]
        assert [r.status_code for r in answers] == [200] * 6
        for gw in (a, b):
            r = httpx.get(f"{gw.url}/v1/separations", headers=bearer(KEYS["tight"]))
            assert r.status_code == 429 and r.json()["code"] == "quota_exceeded", r.text
            assert "requests_per_minute (6)" in r.json()["error"] and "'tight'" in r.json()["error"]
            assert 1 <= int(r.headers["retry-after"]) <= 60
        assert httpx.get(f"{b.url}/v1/separations", headers=bearer(KEYS["roomy"])).status_code == 200
        text = httpx.get(a.metrics_url).text
    assert _rejections("tight", "requests_per_minute") == before + 2
    assert 'musicsplit_gateway_tenant_requests_total{outcome="rejected_quota",tenant="tight"} 2.0' in text


@pytest.fixture
def idle_gateway(baseline_url, tmp_path):
    """A gateway whose jobs stay queued (no workers): what is counted is what was admitted."""
    quotas = {"tight": {"quota": {"concurrent_jobs": 2}}, "minutes": {"quota": {"audio_minutes_per_day": 1.0}},
              "roomy": {}}
    keys = tenants_file(tmp_path / "tenants.yaml", quotas, {**KEYS, "minutes": "minutes-key-0000"})
    with GatewayThread(make_settings(tmp_path / "data", [("dsp-baseline", baseline_url, "eu")], api_keys_file=keys,
                                     max_running_jobs=0)) as gw:
        yield gw


def test_concurrent_jobs(idle_gateway):
    gw = idle_gateway
    first = _upload(gw.url, KEYS["tight"], wav_bytes(tone(1.0, seed=601)))
    keyed = httpx.post(f"{gw.url}/v1/separations", files={"file": ("a.wav", wav_bytes(tone(1.0, seed=602)))},
                       headers=bearer(KEYS["tight"], **{"Idempotency-Key": "order-1"}), timeout=60)
    assert first.status_code == keyed.status_code == 202, (first.text, keyed.text)
    before = _rejections("tight", "concurrent_jobs")
    r = _upload(gw.url, KEYS["tight"], wav_bytes(tone(1.0, seed=603)))
    assert r.status_code == 429 and r.json()["code"] == "quota_exceeded", r.text
    assert "has 2 jobs queued or running and its quota concurrent_jobs is 2" in r.json()["error"]
    assert int(r.headers["retry-after"]) >= 1
    assert _rejections("tight", "concurrent_jobs") == before + 1
    files = [("files", (f"{i}.wav", wav_bytes(tone(1.0, seed=610 + i)), "audio/wav")) for i in range(2)]
    r = httpx.post(f"{gw.url}/v1/separations/batch", files=files, headers=bearer(KEYS["tight"]), timeout=60)
    assert r.status_code == 429 and "concurrent_jobs" in r.json()["error"], r.text
    # The retried submit of a job that exists is answered, not refused; another tenant is not held back.
    again = httpx.post(f"{gw.url}/v1/separations", files={"file": ("a.wav", wav_bytes(tone(1.0, seed=602)))},
                       headers=bearer(KEYS["tight"], **{"Idempotency-Key": "order-1"}), timeout=60)
    assert again.status_code == 202 and again.json()["id"] == keyed.json()["id"]
    assert _upload(gw.url, KEYS["roomy"], wav_bytes(tone(1.0, seed=604))).status_code == 202
    # A job that ends frees its place.
    assert httpx.delete(f"{gw.url}/v1/separations/{first.json()['id']}",
                        headers=bearer(KEYS["tight"])).json()["status"] == "cancelled"
    assert _upload(gw.url, KEYS["tight"], wav_bytes(tone(1.0, seed=605))).status_code == 202


def test_audio_minutes_per_day(idle_gateway):
    gw, key = idle_gateway, "minutes-key-0000"

    def track(seconds: float, seed: int) -> bytes:
        return wav_bytes(tone(seconds, channels=1, seed=seed), subtype="PCM_16")

    assert _upload(gw.url, key, track(30.0, 620)).status_code == 202
    assert _upload(gw.url, key, track(20.0, 621)).status_code == 202
    over = _upload(gw.url, key, track(20.0, 622))  # 70 s of the day's 60
    assert over.status_code == 429 and over.json()["code"] == "quota_exceeded", over.text
    assert "(0.3 min) would pass tenant 'minutes''s quota audio_minutes_per_day (1)" in over.json()["error"]
    assert 1 <= int(over.headers["retry-after"]) <= 86400
    assert _upload(gw.url, key, track(9.0, 623)).status_code == 202, "the refused track took nothing"
    assert _upload(gw.url, key, track(1.0, 624)).status_code == 202
    # The day's minutes used up: refused before the upload is even read.
    r = _upload(gw.url, key, track(1.0, 625))
    assert r.status_code == 429 and "has used its quota audio_minutes_per_day (1) for today" in r.json()["error"]


async def test_the_last_place_is_taken_once_however_many_submit_at_once(job_store):
    async def create(i: int):
        return await job_store.create(tenant="acme", model="m", params={}, user_id=f"u{i}", arm=None, filename=None,
                                  audio_sha=None, max_active=3)

    results = await asyncio.gather(*(create(i) for i in range(8)), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 3
    assert all(isinstance(r, ActiveJobLimit) for r in results if isinstance(r, BaseException))
    assert await job_store.count_active("acme") == 3
    # Another tenant has its own places; a finished job frees one.
    await job_store.create(tenant="globex", model="m", params={}, user_id=None, arm=None, filename=None, audio_sha=None,
                       max_active=1)
    done = next(r for r in results if not isinstance(r, BaseException))
    await job_store.update(done.id, status="succeeded")
    await create(99)


async def test_counters_refuse_without_counting_and_give_back(job_store):
    quotas = Quotas(job_store.engine, {"acme": Tenant(quota=Quota(requests_per_minute=3, audio_minutes_per_day=1.0))})
    while time.time() % 60 > 55:
        await asyncio.sleep(0.5)
    results = await asyncio.gather(*(quotas.count_request("acme") for _ in range(5)), return_exceptions=True)
    assert sum(r is None for r in results) == 3
    assert all(isinstance(r, QuotaExceeded) and r.quota == "requests_per_minute" for r in results if r is not None)
    await quotas.count_request("nobody-configured")  # no quota: never refused
    await quotas.take_audio("acme", 40.0)
    with pytest.raises(QuotaExceeded, match="audio_minutes_per_day"):
        await quotas.take_audio("acme", 30.0)
    await quotas.take_audio("acme", 20.0)  # the refused 30 s were not counted
    await quotas.give_back_audio("acme", 20.0)
    await quotas.take_audio("acme", 20.0)
    with pytest.raises(QuotaExceeded):
        await quotas.audio_left("acme")
    await quotas.prune()


def test_the_quota_series_exist_from_the_start(tmp_path, baseline_url):
    keys = tenants_file(tmp_path / "tenants.yaml", {"fresh": {"quota": {"concurrent_jobs": 2}}}, {"fresh": "f" * 20})
    with GatewayThread(make_settings(tmp_path / "d", [("dsp-baseline", baseline_url, "eu")], api_keys_file=keys)) as gw:
        text = wait_until(lambda: httpx.get(gw.metrics_url).text, 10, "a scrape")
    assert 'musicsplit_gateway_quota_rejections_total{quota="concurrent_jobs",tenant="fresh"} 0.0' in text
    assert 'musicsplit_gateway_tenant_requests_total{outcome="accepted",tenant="fresh"} 0.0' in text
