"""The web UI (/ui) in a real browser: headless Debian Chromium driven by Playwright
(tests/gateway/api/ui/browser.mjs; .ci/install-ui.sh installs both) against a local stack on 127.0.0.1:
the DSP baseline predictor as a model's stable, a second one as its canary (published in a
SeparationModel's status.shadow in kmock's Kubernetes API, as the operator writes it: the way the
gateway learns of canaries), and a gateway with two tenants.

One browser session: tenant A separates a generated track (progress moves, each stem plays with
the track's duration, the zip holds four stems of its length), sees a 400 and a 413 refusal and
only its own jobs; tenant B sees only its own; the listening room plays the stable and the canary
A/B and records a verdict, which the JSON endpoint and the metric then hold. The run saves the
screenshots; with MUSICSPLIT_UPDATE_SCREENSHOTS=1 into docs/ui/ (linked from the README), else
into the test's temporary folder, so a test run leaves the checkout as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import httpx
import pytest
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families

from musicsplit.localstack import start_predictor, wait_until
from musicsplit.v2client import V2Client
from tests.gateway.conftest import GatewayThread, bearer, make_settings, submit, tenants_file, tone, wait_job, wav_bytes
from tests.operator.cluster import Cluster

REPO = Path(__file__).resolve().parents[3]
SCREENSHOTS = REPO / "docs" / "ui"
DRIVER = Path(__file__).with_name("ui") / "browser.mjs"
PLAYWRIGHT_DIR = Path(os.environ.get("PLAYWRIGHT_DIR", "/opt/musicsplit/playwright"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MODEL = "dsp-baseline"
CANARY_VERSION = "2.0.0-canary"
SECONDS = 12.0
RATE = 44100
KEYS = {"team-a": "key-a-7d1c0f3e", "team-b": "key-b-52aa9e01"}
MAX_REQUEST_BYTES = 5_000_000
SM_STATUS = "/apis/musicsplit.io/v1alpha1/namespaces/default/separationmodels/{name}/status"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, baseline_url, logs_dir):
    """A canary predictor, kmock with a SeparationModel naming it, and a gateway with two tenants."""
    d = tmp_path_factory.mktemp("ui")
    canary = start_predictor("builtin://dsp-baseline", MODEL, log_dir=logs_dir,
                             env={"MUSICSPLIT_EXPECTED_VERSION": CANARY_VERSION})
    stable_version = V2Client(baseline_url).separate(MODEL, tone(0.5), RATE).model_version
    try:
        with Cluster(d) as cluster:
            cluster.kubectl("apply", "-f", str(REPO / "manifests" / "crd.yaml"))
            cluster.apply({"apiVersion": "musicsplit.io/v1alpha1", "kind": "SeparationModel",
                           "metadata": {"name": MODEL, "namespace": "default"},
                           "spec": {"model": {"architecture": "dsp", "version": CANARY_VERSION,
                                              "storageUri": f"gs://models/{MODEL}/{CANARY_VERSION}"}}})
            r = httpx.patch(cluster.url + SM_STATUS.format(name=MODEL), headers={
                "Content-Type": "application/merge-patch+json"}, json={"status": {"shadow": {
                    "canaryUrl": canary.url, "canaryVersion": CANARY_VERSION, "stableVersion": stable_version}}})
            assert r.status_code == 200, r.text
            settings = make_settings(
                d / "gw", [(MODEL, baseline_url, "local")], default_model=MODEL,
                api_keys_file=tenants_file(d / "tenants.yaml", {"team-a": {}, "team-b": {}}, KEYS),
                max_request_bytes=MAX_REQUEST_BYTES, chunk_seconds=2.0, chunk_overlap_seconds=0.25,
                chunk_concurrency=1, cache_backend="none", shadow_enabled=True, shadow_sample_rate=0.0,
                shadow_namespace="default", shadow_refresh_s=0.5, shadow_kubeconfig=cluster.kubeconfig)
            with GatewayThread(settings) as gw:
                wait_until(lambda: gw.service.shadow.directory.get(MODEL), 15, "the gateway reads the canary")
                yield gw, stable_version
    finally:
        canary.kill()  # its graceful stop takes seconds, and nothing here needs it


def _metric(url: str, name: str, labels: dict[str, str]) -> float:
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


@pytest.mark.slow
def test_the_page_separates_plays_downloads_refuses_isolates_tenants_and_compares_a_canary(stack, tmp_path):
    gw, stable_version = stack
    assert PLAYWRIGHT_DIR.joinpath("node_modules", "playwright-core").is_dir(), "run .ci/install-ui.sh"
    assert Path(CHROMIUM).exists(), "run .ci/install-ui.sh"
    mixture = tone(SECONDS, seed=3)
    track = tmp_path / "song.wav"
    track.write_bytes(wav_bytes(mixture, subtype="PCM_16"))
    bad = tmp_path / "notes.wav"
    bad.write_bytes(b"these are not audio samples\n" * 100)
    big = tmp_path / "long.wav"
    big.write_bytes(wav_bytes(tone(40.0, seed=4), subtype="PCM_16"))
    assert big.stat().st_size > MAX_REQUEST_BYTES
    # Tenant B's own job, made through the API: A's page must never list it.
    b_job = submit(gw.url, wav_bytes(tone(1.0, seed=5)), headers=bearer(KEYS["team-b"]), filename="b-only.wav",
                   model=MODEL).json()["id"]
    wait_job(gw.url, b_job, headers=bearer(KEYS["team-b"]))

    shots = SCREENSHOTS if os.environ.get("MUSICSPLIT_UPDATE_SCREENSHOTS") == "1" else tmp_path / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    config = {"url": gw.url, "playwright_dir": str(PLAYWRIGHT_DIR), "chromium": CHROMIUM, "timeout_ms": 30_000,
              "key_a": KEYS["team-a"], "key_b": KEYS["team-b"], "model": MODEL, "track": str(track),
              "bad_file": str(bad), "big_file": str(big), "zip_path": str(tmp_path / "stems.zip"),
              "screenshots": str(shots), "failure_shot": str(tmp_path / "failure.png"),
              "note": "canary sounds the same"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    run = subprocess.run(["node", str(DRIVER), str(tmp_path / "config.json"), str(tmp_path / "seen.json")],
                         capture_output=True, text=True, timeout=150)
    seen = json.loads((tmp_path / "seen.json").read_text()) if (tmp_path / "seen.json").exists() else {}
    assert run.returncode == 0 and "error" not in seen, f"{run.stdout}\n{run.stderr}\n{seen.get('error')}"
    # The only errors in the console are the browser's own notes of the refusals the page showed.
    expected = [f"status of {s}" for s in (400, 401, 413)]
    assert all(any(x in e for x in expected) for e in seen["console_errors"]), seen["console_errors"]

    # The stems offered are the model's own (its v2 metadata).
    assert seen["stems_offered"] == ["drums", "bass", "other", "vocals"]
    # Progress moved: some chunks done before the last, shown as it happened.
    chunks = [s["chunks"] for s in seen["progress_seen"] if s["chunks"] is not None]
    done = chunks[-1]
    assert chunks == sorted(chunks) and done >= 5, seen["progress_seen"]  # 12 s in 2 s chunks, in order
    assert any(f"({done}/{done} chunks)" in s["text"] for s in seen["progress_seen"]), seen["progress_seen"]
    between = {s["value"] for s in seen["progress_seen"] if 0 < s["value"] < 1}
    assert len(between) >= 3, seen["progress_seen"]
    assert f"{MODEL} {stable_version}" in seen["facts"] and "Quality estimate" in seen["facts"]
    # Each stem plays, with the track's duration.
    assert sorted(p["stem"] for p in seen["players"]) == ["bass", "drums", "other", "vocals"]
    for p in seen["players"]:
        assert p["playing"] and p["duration"] == pytest.approx(SECONDS, abs=0.01), p
    assert seen["muted_after_solo"] == {"drums": True, "bass": True, "other": True, "vocals": False}
    # The zip: four stems of the track's length.
    with zipfile.ZipFile(tmp_path / "stems.zip") as z:
        names = sorted(z.namelist())
        assert names == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
        for name in names:
            audio, rate = sf.read(io.BytesIO(z.read(name)))
            assert rate == RATE and audio.shape == (int(SECONDS * RATE), 2), name
    # Refusals are shown with what to do.
    assert "400" in seen["refused_400"] and "decod" in seen["refused_400"].lower(), seen["refused_400"]
    assert "413" in seen["refused_413"] and "The limit is" in seen["refused_413"], seen["refused_413"]
    # Tenants see their own jobs only; the key never appears in a URL.
    a_jobs = httpx.get(f"{gw.url}/v1/separations", headers=bearer(KEYS["team-a"])).json()["jobs"]
    assert seen["jobs_a"] == [j["id"] for j in a_jobs] and len(seen["jobs_a"]) == 1 and b_job not in seen["jobs_a"]
    assert seen["jobs_b"] == [b_job]
    assert seen["reopened"] == 4  # a job reopened from the list plays again
    assert not seen["key_in_url"] and seen["key_in_storage"] == KEYS["team-b"]

    # The listening room: both versions separated, played, switched at the same position, judged.
    assert seen["rollouts"] == [f"{MODEL}: {stable_version} → {CANARY_VERSION}"]
    assert seen["agreement"] == {s: "100.0 dB" for s in ("drums", "bass", "other", "vocals")}  # same DSP on both
    assert stable_version in seen["room_qualities"][0] and CANARY_VERSION in seen["room_qualities"][1]
    assert seen["room_after_switch"]["arm"] == "B" and seen["room_after_switch"]["playing"] == "true"
    assert float(seen["room_after_switch"]["position"]) > seen["room_switched_at"]
    verdicts = httpx.get(f"{gw.url}/v1/verdicts", headers=bearer(KEYS["team-a"])).json()
    [v] = verdicts["verdicts"]
    assert (v["model"], v["stable_version"], v["canary_version"], v["verdict"], v["note"], v["track"], v["tenant"]) == \
        (MODEL, stable_version, CANARY_VERSION, "same", config["note"], "song.wav", "team-a")
    assert v["agreement_db"] == {s: 100.0 for s in ("drums", "bass", "other", "vocals")}
    assert v["track_sha256"] == hashlib.sha256(track.read_bytes()).hexdigest()
    assert verdicts["counts"] == {MODEL: {CANARY_VERSION: {"better": 0, "same": 1, "worse": 0}}}
    assert httpx.get(f"{gw.url}/v1/verdicts", headers=bearer(KEYS["team-b"])).json()["verdicts"] == []
    assert _metric(gw.metrics_url, "musicsplit_gateway_listening_verdicts_total",
                   {"model": MODEL, "canary_version": CANARY_VERSION, "verdict": "same"}) >= 1
    for name in ("separate-desktop.png", "separate-phone.png", "jobs-desktop.png", "room-desktop.png",
                 "room-phone.png"):
        assert (shots / name).stat().st_size > 10_000, name
