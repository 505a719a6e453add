"""Completion callbacks: a finished job's view is POSTed to its callback URL, signed with the tenant's
secret, retried with backoff under one idempotency id, delivered after a restart; URLs outside the
tenant's hosts, or resolving to private addresses, are refused."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from musicsplit.gateway.tenancy.callbacks import callbacks, is_public, sign
from musicsplit.localstack import free_port, wait_until

from tests.gateway.conftest import GatewayThread, _read, bearer, make_settings, tenants_file, tone, wait_job, wav_bytes
from tests.gateway.receivers import Receiver

SECRET = "whsec-0123456789abcdef"
KEY = "hooked-key-00000"


def _callbacks(outcome: str) -> float:
    return sum(s.value for m in REGISTRY.collect() if m.name == "musicsplit_gateway_callbacks"
               for s in m.samples if s.name.endswith("_total") and s.labels.get("outcome") == outcome)


def _settings(tmp_path, baseline_url, hosts, **overrides):
    keys = tenants_file(tmp_path / "tenants.yaml", {"hooked": {"callback_hosts": hosts, "webhook_secret": SECRET},
                                                    "plain": {}}, {"hooked": KEY, "plain": "plain-key-000000"})
    fast = dict(callback_poll_s=0.2, callback_retry_initial_s=0.2, callback_retry_max_wait_s=0.5)
    return make_settings(tmp_path / "data", [("dsp-baseline", baseline_url, "eu")], api_keys_file=keys,
                         **{**fast, **overrides})


def _submit(gw, callback_url: str, key: str = KEY, seed: int = 701) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/separations", files={"file": ("a.wav", wav_bytes(tone(1.0, seed=seed)))},
                      data={"model": "dsp-baseline", "callback_url": callback_url}, headers=bearer(key), timeout=60)


def test_a_finished_job_is_posted_signed_and_retried_until_delivered(baseline_url, tmp_path):
    with Receiver(status=500) as hook, GatewayThread(_settings(tmp_path, baseline_url, ["127.0.0.1"],
                                                                callback_allow_private=True)) as gw:
        retried = _callbacks("retried")
        r = _submit(gw, hook.url + "/done?src=musicsplit")
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        wait_until(lambda: len(hook.posts("/done")) >= 2, 30, "two failed deliveries")
        hook.status = 200  # the receiver recovers: the next try is delivered
        wait_until(lambda: delivery(gw, job)["state"] == "delivered", 30, "the delivery")
        view = httpx.get(f"{gw.url}/v1/separations/{job}", headers=bearer(KEY)).json()
    posts = hook.posts("/done")
    assert posts[0][0] == "/done?src=musicsplit"
    ids = {h["x-musicsplit-webhook-id"] for _, h, _ in posts}
    assert len(ids) == 1, "one idempotency id for every try"
    for _, headers, body in posts:
        timestamp = headers["x-musicsplit-webhook-timestamp"]
        expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        assert headers["x-musicsplit-webhook-signature"] == f"sha256={expected}"
        assert headers["content-type"] == "application/json"
    assert json.loads(posts[-1][2]) == view and view["status"] == "succeeded"
    assert _callbacks("retried") >= retried + 2


def delivery(gw, job_id: str) -> dict:
    """A job's callback row, read by a store of the test's own."""
    async def query(store):
        async with store.engine.connect() as conn:
            return dict((await conn.execute(sa.select(callbacks).where(callbacks.c.job_id == job_id))).one()._mapping)

    return asyncio.run(_read(gw.settings, query))


def test_a_delivery_due_when_the_gateway_stopped_is_made_after_the_restart(baseline_url, tmp_path):
    port = free_port()  # nothing listens yet: every try before the restart fails
    settings = _settings(tmp_path, baseline_url, ["127.0.0.1"], callback_allow_private=True,
                         callback_retry_initial_s=3600.0, callback_retry_max_wait_s=3600.0)
    with GatewayThread(settings) as gw:
        job = _submit(gw, f"http://127.0.0.1:{port}/hook", seed=702).json()["id"]
        assert wait_job(gw.url, job, headers=bearer(KEY))["status"] == "succeeded"
        wait_until(lambda: delivery(gw, job)["attempts"] == 1, 30, "a failed try")
    scheduled = delivery(gw, job)
    # An hour away, less the retry's jitter (x0.8..1.2, callbacks.py) and the seconds since the try.
    assert scheduled["state"] == "waiting" and scheduled["next_attempt"] > time.time() + 0.8 * 3600 - 60

    async def due_now(store):  # the next try is an hour away: bring it forward rather than wait
        async with store.engine.begin() as conn:
            await conn.execute(sa.update(callbacks).where(callbacks.c.job_id == job).values(next_attempt=0.0))

    asyncio.run(_read(settings, due_now))
    with Receiver(status=204, port=port) as hook, GatewayThread(settings) as gw:
        wait_until(lambda: hook.posts("/hook"), 30, "the delivery after the restart")
        wait_until(lambda: delivery(gw, job)["state"] == "delivered", 30, "marked delivered")
    body = json.loads(hook.posts("/hook")[0][2])
    assert body["id"] == job and body["status"] == "succeeded"
    assert hook.posts("/hook")[0][1]["x-musicsplit-webhook-id"] == scheduled["id"]


def test_callback_urls_outside_the_tenants_hosts_or_private_are_refused(baseline_url, tmp_path):
    with Receiver(status=200) as hook, GatewayThread(_settings(tmp_path, baseline_url,
                                                               ["localhost", "127.0.0.1", "*.hooks.example"])) as gw:
        cases = {
            "https://evil.example/x": "is not one of tenant 'hooked''s callback_hosts",
            f"{hook.url}/x": "not a public address",  # 127.0.0.1: on the list, but loopback
            "http://[::1]/x": "is not one of",
            "ftp://a.hooks.example/x": "absolute http(s) URL",
            "https://user:pw@a.hooks.example/x": "must not carry credentials",
            "https://a.hooks.example:99999/x": "invalid port",
        }
        for url, fragment in cases.items():
            r = _submit(gw, url)
            assert r.status_code == 400 and fragment in r.json()["error"], (url, r.text)
        r = _submit(gw, "https://a.hooks.example/x", key="plain-key-000000")
        assert r.status_code == 400 and "tenant 'plain' has no callback_hosts" in r.json()["error"]
        # A name on the list that resolves to loopback is refused when the delivery is due.
        refused = _callbacks("refused")
        r = _submit(gw, f"http://localhost:{hook.url.rsplit(':', 1)[1]}/x", seed=703)
        assert r.status_code == 202, r.text
        wait_until(lambda: _callbacks("refused") == refused + 1, 30, "the refusal")
        state = delivery(gw, r.json()["id"])
        assert state["state"] == "refused" and "not a public address" in state["last_error"]
    assert hook.posts() == [], "nothing was sent to the private address"


@pytest.mark.parametrize("address,public", [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("::1", False), ("fe80::1", False), ("fd00::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:10.0.0.1", False), ("64:ff9b::a00:1", False), ("64:ff9b::808:808", True),
    # NAT64 local-use, 6to4 and IPv4-compatible literals carrying private addresses; Teredo.
    ("64:ff9b:1::a00:1", False), ("64:ff9b:1::808:808", False), ("2002:7f00:1::", False),
    ("2002:a9fe:a9fe::1", False), ("2002:808:808::1", True), ("::127.0.0.1", False), ("::a9fe:a9fe", False),
    ("::808:808", True), ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),
])
def test_only_public_addresses_are_called_back(address, public):
    assert is_public(address) is public


def test_the_signature_is_hmac_sha256_of_timestamp_and_body():
    body = b'{"id": "x"}'
    assert sign("s3cret", 1700000000, body) == "sha256=" + hmac.new(
        b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()


async def test_one_broken_delivery_is_counted_and_fails_alone(tmp_path):
    """A delivery that fails in an unforeseen way (here a job row whose view cannot be built) is a
    failed try of its own, retried and then failed; the other deliveries of its round go out."""
    from musicsplit.gateway.tenancy.callbacks import CallbackDeliverer
    from musicsplit.gateway.storage.jobstore import SqlJobStore
    from musicsplit.gateway.tenancy.tenants import Tenant

    settings = make_settings(tmp_path, [], callback_allow_private=True, callback_max_attempts=3,
                             callback_retry_initial_s=0.0, callback_retry_max_wait_s=0.0)
    store = await SqlJobStore.open(f"sqlite+aiosqlite:///{tmp_path / 'jobs.sqlite3'}")
    tenants = {"hooked": Tenant(callback_hosts=["127.0.0.1"], webhook_secret=SECRET)}
    deliverer = CallbackDeliverer(store.engine, tenants, settings)
    try:
        with Receiver(status=204) as hook:
            good = await store.create(tenant="hooked", model="m", params={}, user_id=None, arm=None, filename=None,
                                      audio_sha=None, callback_url=f"{hook.url}/good")
            bad = await store.create(tenant="hooked", model="m", params={}, user_id=None, arm=None, filename=None,
                                     audio_sha=None, callback_url=f"{hook.url}/bad")
            for job in (good, bad):
                await store.update(job.id, status="succeeded", finished=time.time())
            await store.update(bad.id, result={"stems": 5})
            assert await deliverer.deliver_due() == 2  # no exception escapes the round
            assert [p for p, _, _ in hook.posts()] == ["/good"]
            for _ in range(2):
                await deliverer.deliver_due()
        async with store.engine.connect() as conn:
            rows = {r.job_id: r for r in await conn.execute(sa.select(callbacks))}
        assert (rows[good.id].state, rows[good.id].attempts) == ("delivered", 1)
        assert (rows[bad.id].state, rows[bad.id].attempts) == ("failed", 3)
        assert "internal error: TypeError" in rows[bad.id].last_error
    finally:
        await deliverer.stop()
        await store.close()


async def test_a_job_and_its_callback_are_stored_together_or_not_at_all(tmp_path):
    from musicsplit.gateway.storage.jobstore import SqlJobStore
    from musicsplit.gateway.storage.schema import jobs

    store = await SqlJobStore.open(f"sqlite+aiosqlite:///{tmp_path / 'jobs.sqlite3'}")
    try:
        async with store.engine.begin() as conn:  # the callback's write will fail
            await conn.execute(sa.text("CREATE TRIGGER no_callbacks BEFORE INSERT ON callbacks "
                                       "BEGIN SELECT RAISE(ABORT, 'disk full'); END"))
        with pytest.raises(sa.exc.IntegrityError):
            await store.create(tenant="t", model="m", params={}, user_id=None, arm=None, filename=None,
                               audio_sha=None, callback_url="https://hooks.example/x")
        async with store.engine.connect() as conn:
            assert (await conn.execute(sa.select(sa.func.count()).select_from(jobs))).scalar_one() == 0
    finally:
        await store.close()
