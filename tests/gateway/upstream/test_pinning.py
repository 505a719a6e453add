"""A long job during a canary split: behind one URL a 50 % split answers either version, and the
job's chunks go to the version its first chunk was served by, at the URL the SeparationModel's
status publishes for it, so the job finishes with one version and never retries a chunk.

The split is a test double of KServe's routing (a proxy choosing a backend per request); the
per-version URLs are read from a SeparationModel as the operator writes it (canaries.py)."""

from __future__ import annotations

import random

import httpx
import pytest
from prometheus_client import REGISTRY

from musicsplit.gateway.upstream.canaries import version_urls_from
from musicsplit.localstack import start_predictor
from musicsplit.v2client import V2Client
from tests.fixtures.recorder import HOP_BY_HOP, Recorder

from tests.gateway.conftest import submit, tone, wait_job, wav_bytes

MODEL = "dsp-baseline"
CANARY_VERSION = "2.0.0-canary"


def mismatches() -> float:
    return REGISTRY.get_sample_value("musicsplit_gateway_chunks_total",
                                     {"model": MODEL, "outcome": "version_mismatch"}) or 0.0


@pytest.mark.slow
def test_a_long_job_during_a_50_percent_split_finishes_with_one_version(baseline_url, gateway_factory, logs_dir):
    canary = start_predictor("builtin://dsp-baseline", MODEL, log_dir=logs_dir,
                             env={"MUSICSPLIT_EXPECTED_VERSION": CANARY_VERSION})
    stable_version = V2Client(baseline_url).separate(MODEL, tone(0.5), 44100).model_version
    rng = random.Random(7)
    http = httpx.Client(timeout=60)

    def split(req):  # KServe's weighted route: each request to either revision
        target = baseline_url if req.method == "GET" or rng.random() < 0.5 else canary.url
        r = http.request(req.method, target + req.path, content=req.body,
                         headers={k: v for k, v in req.headers.items() if k not in HOP_BY_HOP})
        return r.status_code, {k: v for k, v in r.headers.items()
                               if k.lower() not in HOP_BY_HOP | {"content-encoding"}}, r.content

    try:
        with Recorder(split) as shared:
            # Not one chunk may be sent again: without pinning, a 9-chunk job meets the other version.
            gw = gateway_factory([(MODEL, shared.url, "eu")], chunk_version_retries=0, cache_backend="none")
            status = {"phase": "Progressing", "canaryVersion": CANARY_VERSION, "stableVersion": stable_version,
                      "canaryWeight": 50,
                      "shadow": {"canaryUrl": canary.url, "canaryVersion": CANARY_VERSION,
                                 "stableVersion": stable_version},
                      "endpoints": {"stable": {"version": stable_version, "url": baseline_url},
                                    "canary": {"version": CANARY_VERSION, "url": canary.url}}}
            urls = version_urls_from([{"metadata": {"name": MODEL}, "status": status}])
            gw.service.pool.version_url = lambda model, version: urls.get((model, version))
            before = mismatches()
            versions = set()
            for seed in range(3):
                doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(36.0, seed=seed))).json()["id"], timeout=120)
                assert doc["status"] == "succeeded", doc.get("error")
                assert doc["progress"]["chunks_total"] >= 9
                versions.add(doc["model_version"])
            assert versions <= {stable_version, CANARY_VERSION}
            assert mismatches() == before, "every chunk after the first went to its job's version"
    finally:
        canary.stop()
        http.close()
