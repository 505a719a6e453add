"""Flags from the offline bootstrap: sticky per-user model choice, A/B arms on every
response, feature gates; and `musicsplit ab-report` on what the arms recorded."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import httpx
import pytest

from musicsplit.gateway.experiments.abtest import analyse, report
from musicsplit.gateway.experiments.flags import BOOTSTRAP

from tests.gateway.conftest import submit, tone, wait_job, wav_bytes


def bootstrap_with(tmp_path, **changes) -> str:
    doc = json.loads(BOOTSTRAP.read_text())
    for f in doc["features"]:
        f.update(changes.get(f["name"], {}))
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(doc))
    return str(path)


AB = {"musicsplit.model": {"enabled": True, "variants": [
    {"name": "baseline", "weight": 500, "weightType": "variable", "stickiness": "userId",
     "payload": {"type": "string", "value": "dsp-baseline"}},
    {"name": "demucs", "weight": 500, "weightType": "variable", "stickiness": "userId",
     "payload": {"type": "string", "value": "tiny"}},
]}}


def _v2_body(mix) -> bytes:
    return json.dumps({"inputs": [{"name": "audio", "datatype": "FP32", "shape": list(mix.shape),
                                   "data": mix.ravel().tolist(), "parameters": {"sample_rate": 44100}}]}).encode()


@pytest.mark.slow
def test_ab_arms_are_sticky_per_user_and_reported(baseline_url, predictor_url, gateway_factory, tmp_path):
    gw = gateway_factory([("dsp-baseline", baseline_url, "eu"), ("tiny", predictor_url, "eu")],
                         flags_bootstrap=bootstrap_with(tmp_path, **AB), default_model="dsp-baseline")
    body = _v2_body(tone(0.5))
    arms: dict[str, str] = {}
    for i in range(10):
        user = f"user-{i}"
        seen = set()
        for _ in range(2):
            r = httpx.post(f"{gw.url}/v2/models/default/infer", content=body, headers={"X-User-Id": user}, timeout=60)
            assert r.status_code == 200, r.text
            seen.add((r.headers["x-musicsplit-arm"], r.headers["x-musicsplit-model"]))
        assert len(seen) == 1, f"{user} switched arms: {seen}"
        arms[user] = seen.pop()[0]
    assert set(arms.values()) == {"baseline", "demucs"}
    # Uploads say the arm too, and it is the same arm as on the v2 path.
    job = submit(gw.url, wav_bytes(tone(1.0)), user="user-0").json()
    assert job["arm"] == arms["user-0"]
    assert wait_job(gw.url, job["id"], timeout=60)["status"] == "succeeded"

    out = subprocess.run([sys.executable, "-m", "musicsplit.cli", "ab-report", "--db", str(gw.settings.db_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    print(out.stdout)
    assert "baseline" in out.stdout and "demucs" in out.stdout and "[" in out.stdout
    assert "verdict:" in out.stdout and "p=" in out.stdout


@pytest.mark.slow
def test_feature_gates_turn_off_chunking_and_cache(baseline_url, gateway_factory, tmp_path):
    off = {"musicsplit.chunked-jobs": {"enabled": False}, "musicsplit.cache": {"enabled": False}}
    gw = gateway_factory([("dsp-baseline", baseline_url, "eu")], flags_bootstrap=bootstrap_with(tmp_path, **off))
    data = wav_bytes(tone(9.0, seed=61))
    first = wait_job(gw.url, submit(gw.url, data, user="jo").json()["id"])
    assert first["status"] == "succeeded" and first["progress"]["chunks_total"] == 1
    second = wait_job(gw.url, submit(gw.url, data, user="jo").json()["id"])
    assert second["cached"] is False


def test_a_track_too_long_for_one_request_is_chunked_even_with_the_flag_off(baseline_url, gateway_factory, tmp_path):
    off = {"musicsplit.chunked-jobs": {"enabled": False}}
    gw = gateway_factory([("dsp-baseline", baseline_url, "eu")], flags_bootstrap=bootstrap_with(tmp_path, **off),
                         max_audio_seconds_unchunked=5.0)
    doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(9.0, seed=62)), user="long").json()["id"])
    assert doc["status"] == "succeeded", doc
    assert doc["progress"]["chunks_total"] > 1
    assert any(w.startswith("chunked:") for w in doc["warnings"]), doc["warnings"]


@pytest.mark.slow
def test_a_track_over_the_predictors_byte_limit_is_chunked_even_with_the_flag_off(gateway_factory, tmp_path):
    from musicsplit.localstack import start_predictor

    small = start_predictor("builtin://dsp-baseline", "dsp-baseline", log_dir=tmp_path,
                            env={"MUSICSPLIT_MAX_REQUEST_BYTES": str(1 << 20)})
    try:
        off = {"musicsplit.chunked-jobs": {"enabled": False}}
        gw = gateway_factory([("dsp-baseline", small.url, "eu")], flags_bootstrap=bootstrap_with(tmp_path, **off),
                             predictor_max_request_bytes=1 << 20)
        # 5 s of 48 kHz stereo is 1.9 MB as fp32: well under 600 s, over the predictor's 1 MiB.
        doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(5.0, rate=48000, seed=64), rate=48000)).json()["id"])
        assert doc["status"] == "succeeded", doc["error"]
        assert doc["progress"]["chunks_total"] > 1
        assert any(w.startswith("chunked:") for w in doc["warnings"]), doc["warnings"]
    finally:
        small.stop()


def test_cache_hits_are_not_ab_observations(baseline_url, gateway_factory):
    gw = gateway_factory([("dsp-baseline", baseline_url, "eu")])
    data = wav_bytes(tone(2.0, seed=63))
    first = wait_job(gw.url, submit(gw.url, data, user="obs").json()["id"])
    assert first["status"] == "succeeded"
    second = wait_job(gw.url, submit(gw.url, data, user="obs").json()["id"])
    assert second["status"] == "succeeded" and second["cached"] is True
    observations = gw.observations()
    assert len(observations) == 1 and observations[0]["latency_s"] > 0.0, observations


def test_report_says_significant_only_when_it_is():
    rng = random.Random(0)
    obs = []
    for _ in range(200):
        obs.append({"arm": "control", "model": "a", "outcome": "success",
                    "quality": rng.gauss(0.80, 0.05), "latency_s": rng.gauss(10, 1)})
        obs.append({"arm": "new", "model": "b", "outcome": "success",
                    "quality": rng.gauss(0.85, 0.05), "latency_s": rng.gauss(10, 1)})
    _, comparisons, reference = analyse(obs)
    by_metric = {c.metric: c for c in comparisons}
    assert reference == "control"
    assert by_metric["quality"].significant and by_metric["quality"].difference == pytest.approx(0.05, abs=0.015)
    assert not by_metric["latency_s"].significant
    text = report(obs)
    assert "new vs control: quality" in text and "SIGNIFICANT" in text
    assert report([]) == "no A/B observations recorded yet\n"


def test_gateway_starts_and_serves_with_unleash_unreachable(baseline_url, gateway_factory):
    from tests.gateway.conftest import free_port

    gw = gateway_factory([("dsp-baseline", baseline_url, "eu")],
                         unleash_url=f"http://127.0.0.1:{free_port()}/api", unleash_refresh_s=1)
    assert gw.service.flags.source == "bootstrap"
    doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(1.0, seed=66)), user="kai").json()["id"])
    assert doc["status"] == "succeeded" and doc["arm"] == "control"


def test_gradual_rollout_is_sticky_and_near_its_percentage(tmp_path):
    from musicsplit.gateway.experiments.flags import Flags
    from musicsplit.gateway.settings import GatewaySettings

    rollout = {"musicsplit.model": {"enabled": True, "strategies": [{"name": "flexibleRollout", "parameters": {
        "rollout": "30", "stickiness": "userId", "groupId": "musicsplit.model"}}], "variants": [
        {"name": "htdemucs_ft", "weight": 1000, "weightType": "variable", "stickiness": "userId",
         "payload": {"type": "string", "value": "htdemucs_ft"}}]}}
    flags = Flags(GatewaySettings(data_dir=tmp_path / "d", default_model="htdemucs",
                                  flags_bootstrap=bootstrap_with(tmp_path, **rollout)))
    try:
        first = {f"u{i}": flags.choose_model(f"u{i}") for i in range(1000)}
        again = {u: flags.choose_model(u) for u in first}
        assert first == again, "assignment is sticky per userId"
        share = sum(c.model == "htdemucs_ft" for c in first.values()) / len(first)
        assert 0.25 < share < 0.35, share
        assert {c.arm for c in first.values() if c.model == "htdemucs"} == {"control"}
    finally:
        flags.close()
