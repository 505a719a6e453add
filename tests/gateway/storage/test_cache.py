"""Result cache: a repeat is answered in milliseconds, the disk cache evicts by size,
Redis is shared by replicas, Redis down means uncached (never failed), and the
re-separation rate counts the same user sending the same audio again."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client import REGISTRY

from musicsplit.gateway.storage.cache import DiskCache

from tests.gateway.conftest import submit, tone, wait_job, wav_bytes


def metric(name: str, **labels) -> float:
    return sum(s.value for m in REGISTRY.collect() for s in m.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _repeat(url: str, data: bytes, user: str) -> dict:
    first = wait_job(url, submit(url, data, user=user).json()["id"])
    assert first["status"] == "succeeded" and not first["cached"]
    return submit(url, data, user=user).json()


def test_disk_cache_hit_is_answered_at_upload(baseline_url, gateway_factory):
    """A repeat comes back already succeeded in the upload's own response (timings:
    benchmarks/gateway_cache.py)."""
    gw = gateway_factory([("dsp-baseline", baseline_url, "eu")])
    data = wav_bytes(tone(8.0, seed=31))
    hits = metric("musicsplit_gateway_cache_requests_total", backend="disk", result="hit")
    doc = _repeat(gw.url, data, "fay")
    assert doc["status"] == "succeeded" and doc["cached"] is True and doc["stems"]
    assert metric("musicsplit_gateway_cache_requests_total", backend="disk", result="hit") == hits + 1
    stem = httpx.get(gw.url + doc["stems"]["vocals"])
    assert stem.status_code == 200 and len(stem.content) > 1000
    # A different parameter is a different key.
    other = submit(gw.url, data, user="fay", output_format="flac").json()
    assert other["cached"] is False


def test_disk_cache_evicts_least_recently_used_beyond_its_budget(tmp_path):
    import asyncio

    cache = DiskCache(tmp_path / "cache", max_bytes=2500)
    src = tmp_path / "src"
    src.mkdir()

    async def run():
        for i in range(4):
            f = src / f"s{i}.wav"
            f.write_bytes(b"x" * 1000)
            await cache.put(f"k{i}", {"i": i}, {"vocals": f})
            time.sleep(0.01)
        return [await cache.get(f"k{i}", tmp_path / f"out{i}") is not None for i in range(4)]

    present = asyncio.run(run())
    assert present == [False, False, True, True]
    assert cache.size() <= 2500


@pytest.mark.slow
def test_redis_cache_is_shared_by_replicas_and_redis_down_serves_uncached(
        baseline_url, gateway_factory, redis_server):
    url = redis_server.url
    a = gateway_factory([("dsp-baseline", baseline_url, "eu")], cache_backend="redis", redis_url=url)
    b = gateway_factory([("dsp-baseline", baseline_url, "eu")], cache_backend="redis", redis_url=url)
    data = wav_bytes(tone(4.0, seed=41))
    first = wait_job(a.url, submit(a.url, data, user="gus").json()["id"])
    assert first["status"] == "succeeded"
    # Replica b has never seen this audio; it learns the model version from one request, then hits.
    wait_job(b.url, submit(b.url, wav_bytes(tone(1.0, seed=42))).json()["id"])
    hit = submit(b.url, data, user="gus").json()
    assert hit["status"] == "succeeded" and hit["cached"] is True
    redis_server.stop()
    errors = metric("musicsplit_gateway_cache_requests_total", backend="redis", result="error")
    doc = wait_job(b.url, submit(b.url, wav_bytes(tone(2.0, seed=43))).json()["id"])
    assert doc["status"] == "succeeded" and doc["cached"] is False
    assert metric("musicsplit_gateway_cache_requests_total", backend="redis", result="error") > errors


def test_reseparation_rate_counts_same_user_same_audio(baseline_url, gateway_factory):
    gw = gateway_factory([("dsp-baseline", baseline_url, "eu")], cache_backend="none")
    data = wav_bytes(tone(1.0, seed=51))
    before = metric("musicsplit_gateway_reseparations_total", model="dsp-baseline")
    ids = [submit(gw.url, data, user="hal").json()["id"]]
    ids.append(submit(gw.url, data, user="ivy").json()["id"])  # another user: not a re-separation
    for j in ids:
        wait_job(gw.url, j)
    assert metric("musicsplit_gateway_reseparations_total", model="dsp-baseline") == before
    wait_job(gw.url, submit(gw.url, data, user="hal").json()["id"])
    assert metric("musicsplit_gateway_reseparations_total", model="dsp-baseline") == before + 1


def test_a_partial_or_garbled_redis_entry_is_a_miss_not_a_500(redis_server, tmp_path):
    import asyncio

    import redis

    from musicsplit.gateway.storage.cache import RedisCache

    url = redis_server.url
    src = tmp_path / "vocals.wav"
    src.write_bytes(b"RIFF" + b"\0" * 100)
    raw = redis.Redis.from_url(url)

    async def run():
        cache = RedisCache(url, ttl_s=60)
        try:
            await cache.put("k", {"stems": ["vocals"]}, {"vocals": src})
            hit = await cache.get("k", tmp_path / "out")
            assert hit is not None and hit.files["vocals"].read_bytes() == src.read_bytes()
            raw.hdel(cache.prefix + "k", "file:vocals")  # a stem field lost (partial write, eviction)
            assert await cache.get("k", tmp_path / "out2") is None
            raw.hset(cache.prefix + "k", "meta", b"{not json")
            assert await cache.get("k", tmp_path / "out3") is None
            raw.delete(cache.prefix + "k")
            raw.hset(cache.prefix + "k", "file:vocals", b"x")  # no meta at all
            assert await cache.get("k", tmp_path / "out4") is None
        finally:
            await cache.close()

    asyncio.run(run())
